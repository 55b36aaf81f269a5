"""SageMaker training entry point (run by the PyTorch container, with torchrun when distributed)."""
import sys
from deepfake_mlops.steps import train_main

if __name__ == "__main__":
    sys.exit(train_main())
