#!/usr/bin/env bash
# Roll the Kubernetes deployment to one image and wait until the rollout has finished.
#
# Usage: kubernetes-deploy.sh [--plan] IMAGE
# Environment:
#   K8S_DEPLOYMENT   deployment name (required)
#   K8S_CONTAINER    container to update (default: the deployment name)
#   K8S_NAMESPACE    namespace (default: default)
#   ROLLOUT_TIMEOUT  how long to wait for the rollout (default: 300s)
#   KUBECONFIG_DATA  kubeconfig contents; when empty, kubectl's own configuration is used
#   DEPLOY_COMMAND   a bash command that deploys instead (Helm, kustomize, ECS, a GitOps commit),
#                    run with DEPLOY_IMAGE set to IMAGE@DIGEST (or IMAGE); the K8S_* settings
#                    are then not needed. Its exit status is the rollout's.
#   IMAGE_DIGEST     the image's digest (sha256:...): IMAGE@DIGEST is deployed, so what runs is
#                    what was pushed and verified, whatever the tag points to now. Without it (a
#                    deployment recorded before digests were), the tag is deployed, with a warning.
#   STRATEGY         rolling (default: `kubectl set image` on K8S_DEPLOYMENT) or blue-green
#                    (deployment-bluegreen: K8S_DEPLOYMENT-blue and -green behind the Service
#                    K8S_SERVICE); --plan then prints the slot IMAGE would serve from.
set -euo pipefail

plan=
if [[ "${1:-}" == --plan ]]; then
  plan=1
  shift
fi
image=${1:?usage: kubernetes-deploy.sh [--plan] IMAGE}
digest=${IMAGE_DIGEST:-}
if [[ -n "$digest" ]]; then
  if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "::error title=Deploy::IMAGE_DIGEST is not a sha256 digest" >&2
    exit 2
  fi
  image="$image@$digest"
elif [[ -z "$plan" ]]; then
  echo "::warning title=Deployed by tag::no digest is recorded for $image: the tag is deployed as the registry has it now"
fi
if [[ "${STRATEGY:-rolling}" == blue-green ]]; then
  exec deployment-bluegreen "$([[ -n "$plan" ]] && echo plan || echo deploy)" "$image"
fi
if [[ -n "${DEPLOY_COMMAND:-}" ]]; then
  echo "Deploying $image with the deploy command"
  DEPLOY_IMAGE=$image exec bash -c "$DEPLOY_COMMAND"
fi
deployment=${K8S_DEPLOYMENT:?set the K8S_DEPLOYMENT variable}
container=${K8S_CONTAINER:-$deployment}
namespace=${K8S_NAMESPACE:-default}
timeout=${ROLLOUT_TIMEOUT:-300s}

if [[ -n "${KUBECONFIG_DATA:-}" ]]; then
  kubeconfig=$(mktemp)
  trap 'rm -f "$kubeconfig"' EXIT
  printf '%s\n' "$KUBECONFIG_DATA" > "$kubeconfig"
  export KUBECONFIG=$kubeconfig
fi

echo "Deploying $image to deployment/$deployment (container $container) in $namespace"
kubectl --namespace "$namespace" set image "deployment/$deployment" "$container=$image"
kubectl --namespace "$namespace" rollout status "deployment/$deployment" --timeout "$timeout"
