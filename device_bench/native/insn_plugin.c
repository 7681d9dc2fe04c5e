/*
 * Instruction counter for QEMU user mode (TCG plugin API v1, QEMU 7.2).
 *
 *   qemu-aarch64 -plugin libinsn.so,outfile=COUNT.txt PROGRAM ...
 *
 * Counts guest instructions executed by every thread of the process and writes the total as
 * one decimal line to `outfile` (stderr when absent) at exit. The counter is updated with an
 * atomic add from a per-translation-block callback, so concurrent guest threads are counted
 * exactly (an inline add would race between vCPU threads).
 *
 * Marks: each close() of the file descriptor MARK_FD (one no process holds: it only fails with
 * EBADF) records the count so far; they follow the total, one per line, in the order made. The
 * runners make them around their counted runs (`--count-marks`), so one process gives the count
 * of two spans of runs and the difference of spans, start-up excluded.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insn_count;
static char *outfile;

#define MARK_SYSCALL 57   /* close(2) on aarch64 */
#define MARK_FD 0x5E5E5E  /* device_bench/runner.py COUNT_MARK_FD */
#define MAX_MARKS 16
static uint64_t marks[MAX_MARKS];
static int n_marks;

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == MARK_SYSCALL && (uint32_t)a1 == MARK_FD) {
        int i = __atomic_fetch_add(&n_marks, 1, __ATOMIC_SEQ_CST);
        if (i < MAX_MARKS) {
            marks[i] = __atomic_load_n(&insn_count, __ATOMIC_SEQ_CST);
        }
    }
}

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    __atomic_fetch_add(&insn_count, (uint64_t)(uintptr_t)udata, __ATOMIC_RELAXED);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)n);
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    uint64_t total = __atomic_load_n(&insn_count, __ATOMIC_SEQ_CST);
    FILE *f = outfile ? fopen(outfile, "w") : NULL;
    fprintf(f ? f : stderr, "%" PRIu64 "\n", total);
    for (int i = 0; i < n_marks && i < MAX_MARKS; i++) {
        fprintf(f ? f : stderr, "%" PRIu64 "\n", marks[i]);
    }
    if (f) {
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "outfile=", 8) == 0) {
            outfile = strdup(argv[i] + 8);
        } else {
            fprintf(stderr, "insn plugin: unknown argument %s (valid: outfile=PATH)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
