#!/usr/bin/env bash
# Launch `dck <subcommand>` with torchrun: one process per device, on one or several nodes.
#
#   scripts/torchrun.sh fit -c configs/cifar10_dcb_resnet18.yaml -c configs/trainer/ddp.yaml
#   NPROC_PER_NODE=2 scripts/torchrun.sh fit -c configs/default.yaml --trainer.accelerator cpu
#   # two nodes: the same command on each, NODE_RANK 0 and 1, the same RUN_ID and MASTER_ADDR
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 RUN_ID=cifar-42 scripts/torchrun.sh fit -c ...
#
# Environment (all optional on one node):
#   NPROC_PER_NODE  processes (= devices) per node   default: the GPUs nvidia-smi lists, else 1
#   NNODES          nodes                            default: 1
#   NODE_RANK       this node's rank                 default: 0
#   MASTER_ADDR     address of node 0                default: 127.0.0.1
#   MASTER_PORT     a free port on node 0            default: 29500
#   RUN_ID          names the run folder torchrun-<RUN_ID>, the same on every node and for every
#                   restart (required with NNODES > 1). Starting the same command with the same
#                   RUN_ID again resumes the run from its last checkpoint.
#   MAX_RESTARTS    torchrun restarts of failed workers (they resume from last.ckpt) default: 0
#   PYTHON          the Python of the environment    default: python
#
# The trainer's devices and num_nodes are passed from NPROC_PER_NODE and NNODES, so they always
# match the processes started (`dck` also checks it and stops with a clear message otherwise).
set -euo pipefail

usage() { echo "usage: [NPROC_PER_NODE=N] [NNODES=M NODE_RANK=R MASTER_ADDR=host RUN_ID=id] $0 fit|validate|test|predict [dck arguments]" >&2; exit 2; }
fail() { echo "scripts/torchrun.sh: error: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || usage
SUBCOMMAND=$1
shift
case "$SUBCOMMAND" in fit|validate|test|predict) ;; *) usage ;; esac

if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NPROC_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [[ "$NPROC_PER_NODE" -gt 0 ]] || NPROC_PER_NODE=1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-0}
PYTHON=${PYTHON:-python}

for var in NPROC_PER_NODE NNODES NODE_RANK MASTER_PORT MAX_RESTARTS; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || fail "$var must be a non-negative integer, got '${!var}'"
done
[[ "$NPROC_PER_NODE" -ge 1 && "$NNODES" -ge 1 ]] || fail "NPROC_PER_NODE and NNODES must be >= 1"
[[ "$NODE_RANK" -lt "$NNODES" ]] || fail "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"
if [[ "$NNODES" -gt 1 && -z "${RUN_ID:-}" ]]; then
    fail "NNODES=$NNODES: set RUN_ID to the same value on every node (it names the run folder)"
fi
RUN_ID=${RUN_ID:-$(date +%Y%m%d-%H%M%S)}
[[ "$RUN_ID" =~ ^[A-Za-z0-9._-]+$ ]] || fail "RUN_ID may hold letters, digits, '.', '_' and '-' only, got '$RUN_ID'"

cmd=("$PYTHON" -m torch.distributed.run
     --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --node-rank "$NODE_RANK"
     --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
     --rdzv-id "$RUN_ID" --max-restarts "$MAX_RESTARTS"
     -m dck_lightning.cli "$SUBCOMMAND" "$@"
     --trainer.devices "$NPROC_PER_NODE" --trainer.num_nodes "$NNODES")
echo "scripts/torchrun.sh: ${cmd[*]}" >&2
exec "${cmd[@]}"
