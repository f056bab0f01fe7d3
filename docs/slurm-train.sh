#!/bin/bash
# Data-parallel training of VGG-16-BN on an ImageFolder dataset under Slurm: one process per node,
# all of the node's cores for the engine. Each job trains ten epochs and checkpoints; submit it again
# (or chain with --dependency=afterok) until metrics.jsonl has 74 lines.
#SBATCH --job-name=vgg-train
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
set -euo pipefail
export RAYON_NUM_THREADS=$SLURM_CPUS_PER_TASK
srun --mpi=pmix target/release/vgg train --dataset folder --data-dir /shared/imagenet \
    --arch vgg16_bn --canvas 224 --crop jitter:256,512 --batch 256 --epochs 74 --sync-bn \
    --stop-after 10 --resume --out /shared/runs/vgg16
