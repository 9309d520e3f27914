#!/bin/sh
# Turn a consortium directory made by `gridctl network init` into Kubernetes objects:
#   ConfigMap gridledger-consortium     genesis.json and tls-ca-bundle.pem (public)
#   Secret gridledger-node-<name>       signing.pem, signing.key, tls.pem, tls.key of one node
# printed as YAML on stdout. Each Secret is mounted by exactly one pod, that node's (one
# Deployment per node, see k8s/base/nodes/; endorser-1 runs in committer-1's pod, both of one
# organisation), so a compromised pod holds only its own nodes' keys.
# Identities that no pod runs get no Secret and stay off the cluster: the operators' CLI keys
# (role admin: gridctl, registrations, revocations; role treasury: `gridctl account fund`)
# and the genesis balancing account (settlement.balancing_account), whose key no process
# holds on purpose, so that the settlement agent, which must be online, cannot move the
# imbalance money (docs/operations.md, "Keys that stay off the cluster"). The role is the
# OU of the node's signing certificate, as `gridctl network init` and `org init` write it.
# The organisations' CA keys (orgs/, or ca/ in an organisation directory of `gridctl org
# init`) are never read: keep them off the cluster. An organisation that enrols on its own
# runs this on its own directory (with genesis.json and tls-ca-bundle.pem copied in) and
# gets Secrets for its own nodes only. Needs `kubectl` (client-side dry runs) and `openssl`.
#
#   gridctl network init --consortium-dir ./consortium            # --orderers 7 for production
#   kubectl apply -f k8s/base/namespace.yaml
#   k8s/consortium-secrets.sh ./consortium | kubectl apply -f -
#   kubectl apply -k k8s/overlays/dev
set -eu

usage() { echo "usage: $0 CONSORTIUM_DIR [NAMESPACE]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
dir=$1
namespace=${2:-gridledger}
[ -f "$dir/genesis.json" ] && [ -f "$dir/tls-ca-bundle.pem" ] && [ -d "$dir/nodes" ] || {
  echo "$dir is not a consortium directory (made by gridctl network init)" >&2; exit 1; }

command -v openssl >/dev/null || { echo "$0 needs openssl (to read each node's role)" >&2; exit 1; }

labels="app.kubernetes.io/name=gridledger app.kubernetes.io/part-of=gridledger"
balancing=$(sed -n 's/.*"balancing_account"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' \
  "$dir/genesis.json" | head -n 1)

emit() {  # kubectl create ... arguments; prints one labelled object
  kubectl create "$@" --namespace "$namespace" --dry-run=client -o yaml \
    | kubectl label --local -f - $labels -o yaml
}

emit configmap gridledger-consortium \
  --from-file="genesis.json=$dir/genesis.json" \
  --from-file="tls-ca-bundle.pem=$dir/tls-ca-bundle.pem"

for node in "$dir"/nodes/*/; do
  name=$(basename "$node")
  for file in signing.pem signing.key tls.pem tls.key; do
    [ -f "$node$file" ] || { echo "$node$file is missing" >&2; exit 1; }
  done
  role=$(openssl x509 -in "${node}signing.pem" -noout -subject -nameopt multiline \
    | sed -n 's/^ *organizationalUnitName *= *//p')
  [ -n "$role" ] || { echo "${node}signing.pem names no role (OU)" >&2; exit 1; }
  if [ "$role" = admin ] || [ "$role" = treasury ] || [ "$name" = "$balancing" ]; then
    echo "$name ($role): no pod runs it, kept off the cluster (no Secret)" >&2
    continue
  fi
  echo ---
  emit secret generic "gridledger-node-$name" \
    --from-file="signing.pem=${node}signing.pem" --from-file="signing.key=${node}signing.key" \
    --from-file="tls.pem=${node}tls.pem" --from-file="tls.key=${node}tls.key" \
    | kubectl label --local -f - "gridledger.io/node=$name" -o yaml
done
