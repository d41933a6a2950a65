#!/usr/bin/env bash
# Smoke test of a Kubernetes cluster for ringfs e2e, against whatever KUBECONFIG points to
# (default: the cluster that e2e/cluster up started). Checks, each with a deadline:
#   1. the node(s) are Ready
#   2. a pod from a locally imported image starts and its readiness probe (HTTP) passes
#   3. pod-to-pod: another pod reaches the first pod's port by pod IP (kubectl exec),
#      and through a ClusterIP Service (kube-proxy), and by DNS name when CoreDNS runs;
#      a pod reaches the API server through the kubernetes Service
#   4. `kubectl apply` of a CRD works and a custom object can be created and read back
#   5. `helm install --wait` of a trivial chart (e2e/testdata/charts/ringfs-smoke) works
# Everything is created in a fresh namespace that is deleted at the end.
#
# Environment: SMOKE_IMAGE (default: the busybox image that e2e/cluster imports; it needs
# sh, httpd and wget), SMOKE_TIMEOUT (seconds per wait, default 120), SMOKE_KEEP=1 keeps the
# namespace for debugging.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$E2E_DIR/versions.env"
CACHE="${RINGFS_E2E_CACHE:-$HOME/.cache/ringfs-e2e}"
export PATH="$CACHE/bin:$PATH"
export KUBECONFIG="${KUBECONFIG:-${RINGFS_E2E_STATE:-/var/lib/ringfs-e2e}/admin.kubeconfig}"
IMAGE="${SMOKE_IMAGE:-$BUSYBOX_IMAGE}"
TIMEOUT="${SMOKE_TIMEOUT:-120}"
NS="ringfs-smoke-$(date +%s)-$$"
CRD_FILE="$E2E_DIR/testdata/crd-widget.yaml"
CHART="$E2E_DIR/testdata/charts/ringfs-smoke"

passed=0 failed=0 t_start=$SECONDS
say() { printf '[smoke %3ds] %s\n' "$(( SECONDS - t_start ))" "$*"; }
fail() {
  say "FAIL: $*"
  failed=$(( failed + 1 ))
  echo "$passed passed, $failed failed"
  exit 1
}
pass() { say "ok: $*"; passed=$(( passed + 1 )); }

# poll DESCRIPTION COMMAND...: until COMMAND succeeds, for at most $TIMEOUT seconds.
poll() {
  local desc="$1"; shift
  local deadline=$(( SECONDS + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < deadline )) || { say "timed out after ${TIMEOUT}s: $desc"; return 1; }
    sleep 0.5
  done
}

k() { kubectl "$@"; }
kn() { kubectl -n "$NS" "$@"; }

debug_ns() {
  say "--- state of namespace $NS"
  kn get pods -o wide 2>&1 || true
  kn get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 || true
}

cleanup() {
  local rc=$?
  [ $rc -ne 0 ] && debug_ns
  if [ "${SMOKE_KEEP:-0}" != 1 ]; then
    helm uninstall -n "$NS" smoke --wait --timeout 60s >/dev/null 2>&1 || true
    k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    k delete -f "$CRD_FILE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap cleanup EXIT

command -v kubectl >/dev/null || fail "kubectl not found (run e2e/build.sh)"
command -v helm >/dev/null || fail "helm not found (run e2e/build.sh)"
say "KUBECONFIG=$KUBECONFIG image=$IMAGE namespace=$NS"

# 1. Nodes Ready.
all_nodes_ready() {
  local out
  out="$(k get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')"
  [ -n "$out" ] && ! grep -qv '^True$' <<<"$out"
}
poll "all nodes Ready" all_nodes_ready || fail "nodes are not Ready: $(k get nodes --no-headers 2>&1)"
pass "nodes Ready: $(k get nodes --no-headers | awk '{print $1}' | tr '\n' ' ')"

k create namespace "$NS" >/dev/null
poll "service account default in $NS" kn get serviceaccount default || fail "no default service account in $NS"

# 2. A server pod with an HTTP readiness probe, from the locally imported image.
kn apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: server
  labels: {app: smoke-server}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo ringfs-smoke-ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - {name: http, containerPort: 8080}
    readinessProbe:
      httpGet: {path: /index.html, port: http}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "touch /tmp/ready && exec sleep 3600"]
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: smoke-server
spec:
  selector: {app: smoke-server}
  ports:
  - {name: http, port: 80, targetPort: http}
EOF
kn wait --for=condition=Ready pod/server pod/client --timeout="${TIMEOUT}s" >/dev/null \
  || fail "pods server/client did not become Ready (readiness probes)"
pass "pods from $IMAGE started; HTTP and exec readiness probes passed"

# 3. Pod-to-pod, Service and DNS.
server_ip="$(kn get pod server -o jsonpath='{.status.podIP}')"
client_ip="$(kn get pod client -o jsonpath='{.status.podIP}')"
[ -n "$server_ip" ] && [ "$server_ip" != "$client_ip" ] || fail "unexpected pod IPs: server=$server_ip client=$client_ip"
# (Debian's static busybox wget crashes with -T; bound it with the timeout applet instead.)
fetch() { [ "$(kn exec client -- timeout 5 wget -q -O - "$1" 2>/dev/null)" = ringfs-smoke-ok ]; }
poll "client -> server pod IP" fetch "http://$server_ip:8080/index.html" \
  || fail "pod client ($client_ip) cannot reach pod server ($server_ip:8080)"
pass "pod $client_ip reached pod $server_ip:8080"
svc_ip="$(kn get service smoke-server -o jsonpath='{.spec.clusterIP}')"
poll "client -> service ClusterIP" fetch "http://$svc_ip/index.html" \
  || fail "pod client cannot reach service smoke-server at $svc_ip:80 (kube-proxy?)"
pass "pod reached ClusterIP service $svc_ip:80"
# In-cluster clients (the operator) reach the API server through the kubernetes Service.
api_svc() {
  local out
  out="$(kn exec client -- sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | timeout 5 nc -w 3 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT"')"
  grep -q 'HTTPS server' <<<"$out"
}
poll "client -> kubernetes service" api_svc || fail "pod cannot reach the API server through the kubernetes Service"
pass "pod reached the API server through the kubernetes Service ($(kn exec client -- sh -c 'echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"'))"
if k -n kube-system get service kube-dns >/dev/null 2>&1; then
  poll "client -> service DNS name" fetch "http://smoke-server.$NS.svc.cluster.local/index.html" \
    || fail "pod client cannot reach smoke-server.$NS.svc.cluster.local (CoreDNS?)"
  pass "pod reached smoke-server.$NS.svc.cluster.local by DNS"
else
  say "skip: no kube-dns service, DNS not checked"
fi

# 4. CRD and a custom object.
k apply -f "$CRD_FILE" >/dev/null || fail "kubectl apply -f $CRD_FILE"
k wait --for=condition=Established crd/widgets.smoke.ringfs.io --timeout="${TIMEOUT}s" >/dev/null \
  || fail "CRD widgets.smoke.ringfs.io not Established"
create_widget() {
  kn apply -f - <<EOF
apiVersion: smoke.ringfs.io/v1alpha1
kind: Widget
metadata: {name: w1}
spec: {size: 3, color: blue}
EOF
}
# Discovery of a new CRD takes a moment to reach kubectl's cache: retry within the deadline.
poll "create a Widget" create_widget || fail "cannot create a Widget custom object"
[ "$(kn get widget w1 -o jsonpath='{.spec.size}')" = 3 ] || fail "Widget w1 does not read back"
if kn apply -f - >/dev/null 2>&1 <<EOF
apiVersion: smoke.ringfs.io/v1alpha1
kind: Widget
metadata: {name: w2}
spec: {size: 0}
EOF
then fail "schema validation did not reject Widget w2 with size 0"; fi
pass "CRD applied; custom object created, read back, and schema enforced"

# 5. helm install of a trivial chart.
helm install smoke "$CHART" -n "$NS" --set image="$IMAGE" --wait --timeout "${TIMEOUT}s" >/dev/null \
  || fail "helm install of $CHART failed"
grep -q '^STATUS: deployed$' <<<"$(helm status smoke -n "$NS")" \
  || fail "helm release smoke is not deployed"
kn rollout status deployment/smoke-web --timeout="${TIMEOUT}s" >/dev/null || fail "chart deployment not rolled out"
pass "helm install of ringfs-smoke chart deployed and Ready"

say "all checks passed in $(( SECONDS - t_start ))s"
echo "$passed passed, $failed failed"
