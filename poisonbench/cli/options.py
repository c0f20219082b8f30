"""Options shared by several commands (one definition each)."""

from __future__ import annotations

import typer

from ..data import DEFAULT_DATASET

Dataset = typer.Option(DEFAULT_DATASET, "--dataset", envvar="POISONBENCH_DATASET",
                       help="Dataset name (mnist-5k, mnist, fashion-mnist, cifar10) or a path to an .npz with "
                            "x (uint8) and y (int). Env: POISONBENCH_DATASET.")
DataDir = typer.Option(None, "--data-dir",
                       help="Directory holding the dataset files (torchvision layout or the raw files); "
                            "default $POISONBENCH_DATA_DIR or ~/.cache/poisonbench/data.")
NpzSplit = typer.Option(None, "--npz-split", metavar="VAL,TEST",
                        help="An .npz dataset's validation and test fractions (default 0.02,0.18: 80 / 2 / 18 %).")
Download = typer.Option(False, "--download", help="Download the dataset with torchvision if it is not found.")
Results = typer.Option(None, "--results", envvar="POISONBENCH_RESULTS",
                       help="Results workspace (default ./results). Env: POISONBENCH_RESULTS.", show_default=False)
Json = typer.Option(False, "--json", help="Print machine-readable JSON on stdout (progress goes to stderr).")
Device = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")
Seed = typer.Option(0, "--seed", help="Base seed; trial t uses seed + t.")
Accel = typer.Option("auto", "--accel",
                     help="Faster kernels (engine.kernels): auto (where they pay off: on the CPU, DFT-domain "
                          "convolutions and moment BatchNorm in training; on any device, frozen copies with BatchNorm "
                          "folded and ReLU + pooling fused; same numbers up to float rounding) | off (plain PyTorch "
                          "modules everywhere). Execution only: recorded in env, not in the run or poison id.")
Target = typer.Option(None, "--target", metavar="I",
                      help="Targeted: the target test image (index into the test split); default: drawn from the "
                           "seed (or named by the file).")
Intended = typer.Option(None, "--intended", metavar="C", help="Targeted: the class the target should be taken for "
                                                              "(≠ its own; goes with --target).")
Setup = typer.Option(None, "--setup", metavar="FILE",
                     help="Targeted: take the target and intended class (and the base images, where the command "
                          "chooses them) from this setup file (the 'Just How Toxic' benchmark's setups as JSON, "
                          "schema in docs/engine.md).")
SetupIndex = typer.Option(0, "--setup-index", metavar="I", help="Targeted: the setup to take (defend: trial t takes "
                                                                "setup I + t).")
