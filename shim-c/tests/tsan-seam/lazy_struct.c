/* cffi-ft: the seam test (xtask/tests/tsan_seams.rs). Compiled WITH -fsanitize=thread
 * against the kit's real cffi_ft.h, linked with stand_in_staticlib.c (uninstrumented).
 * Like a lazy struct of step 2: a builder thread fills the fields and completes the
 * object through cffi_ft_lazy_force(); reader threads wait for cffi_ft_lazy_is_done()
 * and read the fields. The only happens-before edge TSan can see is the header's
 * annotation: with CFFI_FT_TSAN_SEAMS=off it must report a data race, with the
 * annotations on it must report none.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cffi_ft.h"

int cffi_ft_tsan_seams = 1;
char cffi_ft_tsan_realize_lock_sync;

struct lazy_struct {
    uintptr_t state;
    long size;
    long fields[8];
};

#define READERS 4
static struct lazy_struct obj = { CFFI_FT_LAZY_LAZY, 0, { 0 } };

static int fill(void *ctx)
{
    struct lazy_struct *s = ctx;
    int i;
    for (i = 0; i < 8; i++)
        s->fields[i] = 100 + i;
    s->size = 64;
    return 0;
}

static void *builder(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)cffi_ft_lazy_force(&obj.state, fill, &obj);
}

static void *reader(void *arg)
{
    long sum = 0;
    int i;
    (void)arg;
    while (!cffi_ft_lazy_is_done(&obj.state))
        ;
    for (i = 0; i < 8; i++)
        sum += obj.fields[i];
    return (void *)(intptr_t)(sum + obj.size);
}

int main(void)
{
    pthread_t r[READERS], b;
    const char *seams = getenv("CFFI_FT_TSAN_SEAMS");
    int i, bad = 0;
    cffi_ft_tsan_seams = !(seams != NULL && strcmp(seams, "off") == 0);
    for (i = 0; i < READERS; i++)
        pthread_create(&r[i], NULL, reader, NULL);
    pthread_create(&b, NULL, builder, NULL);
    for (i = 0; i < READERS; i++) {
        void *got;
        pthread_join(r[i], &got);
        bad |= (intptr_t)got != 64 + 8 * 100 + 28;
    }
    pthread_join(b, NULL);
    printf("seams %s: %s\n", cffi_ft_tsan_seams ? "on" : "off", bad ? "WRONG VALUES" : "values right");
    return bad;
}
