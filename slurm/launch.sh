#!/bin/bash
# The body shared by the sbatch templates (train_cpu.sbatch, train_single_node.sbatch,
# train_multi_node.sbatch): they resolve the repository and `exec` this script in the batch
# shell, so the traps below belong to the batch shell itself. Not meant to be run by hand.
#
#   launch.sh [speechkit.train overrides...]
#
# What it does, in order:
#  1. checks the environment: inside a slurm job, SPEECHKIT_ROOT/.venv/bin/python (or
#     SPEECHKIT_PYTHON) and SPEECHKIT_ROOT/speechkit exist;
#  2. leaves the user's overrides untouched: a `distributed.world_size=N` that differs from
#     SLURM_NTASKS is refused (exit 2, one line) before anything starts; without one,
#     `distributed.world_size=$SLURM_NTASKS` is appended as a check;
#  3. runs `srun python -m speechkit.train ...` in the background and waits for it, trapping
#     USR1 and TERM in the batch shell and forwarding them to the step as USR1 (srun turns a
#     TERM into SIGKILL for its tasks, so TERM is never forwarded as TERM);
#  4. decides "pre-empted" from the status file the ranks write (SPEECHKIT_STATUS_FILE holds
#     `75` when a rank left with status 75 after rank 0 saved checkpoint_last.pt), whatever
#     srun's own status is (srun --kill-on-bad-exit=1 reports 143 when it killed slower
#     ranks after the first exited 75), or srun's status 75;
#  5. pre-empted: `scontrol requeue $SLURM_JOB_ID` while SLURM_RESTART_COUNT < MAX_REQUEUES
#     and exit 0 (the run shows as REQUEUED in `sacct --duplicates`); past MAX_REQUEUES it
#     exits 75 with one line. Otherwise it exits with srun's status.
#
# Variables (export them before sbatch; sbatch passes the environment on):
#   MAX_REQUEUES        requeues allowed for one job id (default 20; counts every requeue
#                       of the job, including slurm's own for pre-emption or node failure)
#   SPEECHKIT_ROOT      the repository (default: found by the template)
#   SPEECHKIT_PYTHON    the interpreter (default: $SPEECHKIT_ROOT/.venv/bin/python)
#   SPEECHKIT_STATUS_DIR  where the per-run status file goes; must be visible from every node
#                       (default: $SLURM_SUBMIT_DIR)
#   SPEECHKIT_SRUN_ARGS extra srun arguments (word-split), e.g. "--cpu-bind=none"
set -euo pipefail

die() {
    echo "speechkit-slurm: error: $*" >&2
    exit 2
}

[ -n "${SLURM_JOB_ID:-}" ] || die "SLURM_JOB_ID is not set; submit the template with sbatch"
[ -n "${SLURM_NTASKS:-}" ] || die "SLURM_NTASKS is not set; give sbatch --ntasks or --ntasks-per-node"
root=${SPEECHKIT_ROOT:?}
python=${SPEECHKIT_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || die "$python: no python interpreter there; create the venv (./setup.sh) or set SPEECHKIT_PYTHON"
[ -f "$root/speechkit/__init__.py" ] || die "$root/speechkit: package not found; set SPEECHKIT_ROOT to the repository"
max_requeues=${MAX_REQUEUES:-20}
case "$max_requeues" in
    '' | *[!0-9]*) die "MAX_REQUEUES=$max_requeues; expected a non-negative integer" ;;
esac

# --- user overrides stay as given; the world size is a check --------------------------------
world_size_given=
for arg in "$@"; do
    case "$arg" in
        distributed.world_size=* | +distributed.world_size=* | ++distributed.world_size=*)
            world_size_given=${arg#*=}
            ;;
    esac
done
args=("$@")
if [ -z "$world_size_given" ]; then
    args+=("distributed.world_size=${SLURM_NTASKS}")
elif [ "$world_size_given" != "$SLURM_NTASKS" ]; then
    die "distributed.world_size=${world_size_given} but this job has SLURM_NTASKS=${SLURM_NTASKS}; submit with ${world_size_given} tasks (sbatch --nodes/--ntasks-per-node) or drop the override"
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
restarts=${SLURM_RESTART_COUNT:-0}
status_dir=${SPEECHKIT_STATUS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
export SPEECHKIT_STATUS_FILE="$status_dir/.speechkit-status.${SLURM_JOB_ID}.${restarts}"
rm -f "$SPEECHKIT_STATUS_FILE"

echo "speechkit-slurm: job ${SLURM_JOB_ID} restart ${restarts}/${max_requeues}, ${SLURM_NTASKS} task(s) on ${SLURM_JOB_NODELIST:-?}, repo ${root}"

# --- run the step; forward USR1/TERM that reach the batch shell --------------------------------
srun_pid=
trapped=0
forward() {
    trapped=1
    echo "speechkit-slurm: batch shell got SIG$1; forwarding SIGUSR1 to the job step"
    if [ -n "$srun_pid" ]; then
        kill -s USR1 "$srun_pid" 2>/dev/null || true
    fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# shellcheck disable=SC2086  # SPEECHKIT_SRUN_ARGS is meant to be word-split
srun --kill-on-bad-exit=1 ${SPEECHKIT_SRUN_ARGS:-} "$python" -m speechkit.train "${args[@]}" &
srun_pid=$!
while :; do
    trapped=0
    set +e
    wait "$srun_pid"
    status=$?
    set -e
    # a trapped signal interrupts `wait` (status > 128); bash keeps the status of a child that
    # has ended, so waiting again returns the step's real status.
    [ "$trapped" = 1 ] || break
done

marker=
if [ -f "$SPEECHKIT_STATUS_FILE" ]; then
    marker=$(head -c 16 "$SPEECHKIT_STATUS_FILE" | tr -d '[:space:]')
    rm -f "$SPEECHKIT_STATUS_FILE"
fi

if [ "$marker" = 75 ] || [ "$status" -eq 75 ]; then
    if [ "$restarts" -ge "$max_requeues" ]; then
        echo "speechkit-slurm: error: pre-empted after ${restarts} requeue(s), MAX_REQUEUES=${max_requeues}: not requeueing; resubmit the same command to resume from checkpoint_last.pt" >&2
        exit 75
    fi
    echo "speechkit-slurm: pre-empted (srun status ${status}, status file '${marker}'): requeueing job ${SLURM_JOB_ID} (restart $((restarts + 1)))"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
        echo "speechkit-slurm: error: scontrol requeue ${SLURM_JOB_ID} failed (job cancelled or not requeueable: sbatch --requeue, JobRequeue); resubmit to resume from checkpoint_last.pt" >&2
        exit 75
    fi
    exit 0
fi
if [ "$status" -ne 0 ]; then
    echo "speechkit-slurm: srun exited with status ${status}; not requeueing" >&2
fi
exit "$status"
