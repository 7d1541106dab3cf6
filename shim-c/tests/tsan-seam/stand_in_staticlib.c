/* cffi-ft: a stand-in for the staticlib's lazy-completion protocol, for the seam test
 * (xtask/tests/tsan_seams.rs). Compiled WITHOUT -fsanitize=thread, like the Rust
 * staticlib: TSan sees none of its atomics. Same contract as cffi_ft_lazy_force() in
 * cffi_ft.h: a lock (here a spin lock), build(ctx) once, then DONE published with a
 * release store. Not the kit's code: the test is about what TSan can see at the seam.
 */
#include <stddef.h>
#include <stdint.h>

#define LAZY 1
#define DONE 2

static unsigned char lock_word;

int cffi_ft_lazy_force(uintptr_t *state, int (*build)(void *ctx), void *ctx)
{
    int rc = 1;
    if (__atomic_load_n(state, __ATOMIC_ACQUIRE) == DONE)
        return 1;
    while (__atomic_exchange_n(&lock_word, 1, __ATOMIC_ACQUIRE))
        ;
    if (__atomic_load_n(state, __ATOMIC_RELAXED) == LAZY) {
        if (build(ctx) == 0)
            __atomic_store_n(state, DONE, __ATOMIC_RELEASE);
        else
            rc = -1;
    }
    __atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE);
    return rc;
}
