# Sourced by e2e/build.sh: builds the CSI sidecars into $OUT (a bin directory) and copies
# the VolumeSnapshot CRDs of the external-snapshotter client module, and the
# snapshot-controller's RBAC to $OUT/../rbac-snapshot-controller.yaml.
# shellcheck shell=bash

build_csi_sidecars() {
  local m
  cd "$E2E_DIR/modules/csi-provisioner" || return 1
  "${NICE[@]}" go build -trimpath -ldflags "-s -w -X main.version=$CSI_PROVISIONER_VERSION" -o "$OUT/" \
    github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
  cd "$E2E_DIR/modules/csi-attacher" || return 1
  "${NICE[@]}" go build -trimpath -ldflags "-s -w -X main.version=$CSI_ATTACHER_VERSION" -o "$OUT/" \
    github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher
  cd "$E2E_DIR/modules/csi-snapshotter" || return 1
  "${NICE[@]}" go build -trimpath -ldflags "-s -w -X main.version=$CSI_SNAPSHOTTER_VERSION" -o "$OUT/" \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
  cd / || return 1
  GOBIN="$OUT" "${NICE[@]}" go install -trimpath -ldflags "-s -w -X main.version=$CSI_RESIZER_VERSION" \
    "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer@$CSI_RESIZER_VERSION"
  m="$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$CSI_SNAPSHOTTER_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$m/config/crd" ] || { echo "no config/crd in the external-snapshotter client module ($m)"; return 1; }
  mkdir -p "$OUT/../crds"
  cp "$m"/config/crd/*.storage.k8s.io_*.yaml "$OUT/../crds/"
  chmod u+w "$OUT/../crds/"*.yaml
  # The snapshot-controller's RBAC (the cluster script deploys the controller itself).
  m="$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/v8@$CSI_SNAPSHOTTER_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  cp "$m/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml" "$OUT/../rbac-snapshot-controller.yaml"
  chmod u+w "$OUT/../rbac-snapshot-controller.yaml"
}
