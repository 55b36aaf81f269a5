"""Start a deepfake-mlops processing step: unpack the source bundle, install what is missing, run the step."""
import importlib.metadata, os, re, subprocess, sys, tarfile
from pathlib import Path

# This script starts in a bare framework container, before the package's requirements are installed, so it
# uses the standard library only and imports nothing from the package it unpacks. The rule that reads a
# requirement's name therefore lives here, and `deepfake_mlops.steps` imports it from this file (the bundle
# carries it at its top and as `deepfake_mlops/launchers/launch.py`).
def requirement_name(requirement):
    "The distribution name at the start of a requirement line: `av>=14,<20` -> `av`."
    return re.split(r"[<>=!~ \[]", requirement)[0]

def _missing(requirements):
    out = []
    for req in requirements:
        try:
            importlib.metadata.version(requirement_name(req))
        except importlib.metadata.PackageNotFoundError:
            out.append(req)
    return out

def main():
    # the container's `/opt/ml`, moved under $DEEPFAKE_MLOPS_CONTAINER_ROOT when the local engine runs the step
    ml = Path(os.environ.get("DEEPFAKE_MLOPS_CONTAINER_ROOT") or "/")/"opt"/"ml"
    bundle = next((ml/"processing"/"input"/"source").glob("*.tar.gz"))
    dest = ml/"processing"/"source"
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    lines = (dest/"requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip()]
    missing = _missing(requirements)
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *missing])
    sys.path.insert(0, str(dest))
    from deepfake_mlops.steps import main as run_step
    return run_step(sys.argv[1:])

if __name__ == "__main__":
    sys.exit(main())
