"""The linear recurrence (scan) of diagonal state space models and its fast kernels.

:func:`scan` runs ``h[:, k] = lam * h[:, k-1] + b[:, k]``; :func:`lru_recurrence` runs the LRU's
``x[k] = lam * x[k-1] + B u[k]``, ``y[k] = Re(C x[k])``. Both take ``backend=`` "auto", "ref",
"chunked" or "native" (see :mod:`shrinkssm.ops.scan` for what each does and how "auto" chooses) and
are differentiable in every tensor argument. Conventions: :mod:`shrinkssm.lti`.
"""

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

__all__ = [
    "BACKENDS",
    "lru_recurrence",
    "lru_recurrence_ref",
    "native_available",
    "resolve_backend",
    "scan",
    "scan_ref",
]
