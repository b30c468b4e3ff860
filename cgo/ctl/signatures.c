/*
 * Compile-time proof that the exports of main.go have exactly the signatures that
 * ivshim_ctl.h gives their typedefs: the front calls them through those typedefs after
 * dlsym(). Emits no code.
 */
#include "ivshim_ctl.h"
#include "_cgo_export.h"

#define IVSHIM_SAME_TYPE(fn, type) \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&fn), type), #fn " does not match " #type)

IVSHIM_SAME_TYPE(ivshim_ctl_start, ivshim_ctl_start_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_alloc, ivshim_ctl_alloc_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_free, ivshim_ctl_free_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_finalize, ivshim_ctl_finalize_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_release, ivshim_ctl_release_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_rejoin, ivshim_ctl_rejoin_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_ring, ivshim_ctl_ring_fn);
IVSHIM_SAME_TYPE(ivshim_ctl_adopt, ivshim_ctl_adopt_fn);
