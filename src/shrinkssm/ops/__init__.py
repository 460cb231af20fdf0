"""The linear recurrence (scan) of diagonal state space models and its fast kernels.

:func:`scan` runs ``h[:, k] = lam * h[:, k-1] + b[:, k]``; :func:`lru_recurrence` runs the LRU's
``x[k] = lam * x[k-1] + B u[k]``, ``y[k] = Re(C x[k])``. Both take ``backend=`` "auto", "ref",
"chunked" or "native" (see :mod:`shrinkssm.ops.scan` for what each does and how "auto" chooses) and
are differentiable in every tensor argument. Conventions: :mod:`shrinkssm.lti`. :func:`ssd_scan`
is the scan of Mamba-2 layers (scalar decay per head: a native CPU kernel, the chunked SSD form in
plain PyTorch and a sequential reference; :mod:`shrinkssm.ops.ssd_scan`).

The native kernels are PyTorch custom operators (namespace ``shrinkssm``, listed in
:mod:`shrinkssm.ops._native_backend`), so ``torch.compile`` and ``torch.export`` trace through
them. Their instruction-set path: :func:`native_isas` (compiled and supported here, best last),
:func:`native_isa` (in use), :func:`set_native_isa`; the environment variable
``SHRINKSSM_NATIVE_ISA`` (e.g. ``avx2``) is applied when this package is imported (an unknown or
unsupported value warns and keeps the best path).
"""

from shrinkssm.ops._native_backend import (
    ISA_ENV as ISA_ENV,
)
from shrinkssm.ops._native_backend import (
    apply_isa_env as _apply_isa_env,
)
from shrinkssm.ops._native_backend import (
    native_isa as native_isa,
)
from shrinkssm.ops._native_backend import (
    native_isas as native_isas,
)
from shrinkssm.ops._native_backend import (
    set_native_isa as set_native_isa,
)
from shrinkssm.ops.scan import (
    BACKENDS as BACKENDS,
)
from shrinkssm.ops.scan import (
    lru_recurrence as lru_recurrence,
)
from shrinkssm.ops.scan import (
    lru_recurrence_ref as lru_recurrence_ref,
)
from shrinkssm.ops.scan import (
    native_available as native_available,
)
from shrinkssm.ops.scan import (
    resolve_backend as resolve_backend,
)
from shrinkssm.ops.scan import (
    scan as scan,
)
from shrinkssm.ops.scan import (
    scan_ref as scan_ref,
)
from shrinkssm.ops.ssd_scan import (  # noqa: E402
    ssd_scan as ssd_scan,
)
from shrinkssm.ops import selective_scan as _selective_scan  # noqa: F401, E402 (registers shrinkssm::selective_*)

_apply_isa_env()

__all__ = [
    "BACKENDS",
    "ISA_ENV",
    "lru_recurrence",
    "lru_recurrence_ref",
    "native_available",
    "native_isa",
    "native_isas",
    "resolve_backend",
    "scan",
    "scan_ref",
    "set_native_isa",
    "ssd_scan",
]
