#!/usr/bin/env bash
# Create the Secrets the manifests reference (they are never part of deploy/): values come from
# the environment or are generated here and go to the API server through a pipe (never a file,
# never a command line). Existing Secrets are left alone unless --replace is given.
#
#   RADFORGE_SALT=... deploy/scripts/create-secrets.sh                   # radforge-secrets
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... deploy/scripts/create-secrets.sh
#   PGPASSWORD=... deploy/scripts/create-secrets.sh                      # prod: radforge-postgres
#
# radforge-secrets:      api-token (the control plane's bearer token), salt (series-key salt;
#                        keep it stable: de-duplication across runs depends on it)
# radforge-object-store: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, only without workload identity
# radforge-postgres:     password, only with a PostgreSQL database_url (overlays/prod)
set -euo pipefail

NAMESPACE="${NAMESPACE:-radforge}"
REPLACE=0
[[ "${1:-}" == "--replace" ]] && REPLACE=1

exists() {
    kubectl -n "${NAMESPACE}" get secret "$1" >/dev/null 2>&1
}

# apply <name> <key=value>...: create (or with --replace, update) a generic Secret; the pairs
# reach kubectl as an env file on a pipe, so no value appears in a process listing
apply() {
    local name="$1"
    shift
    if exists "${name}" && [[ "${REPLACE}" -eq 0 ]]; then
        echo "secret/${name} exists (kept; --replace to update)"
        return 0
    fi
    kubectl -n "${NAMESPACE}" create secret generic "${name}" \
        --from-env-file=<(printf '%s\n' "$@") --dry-run=client -o yaml \
        | kubectl -n "${NAMESPACE}" apply -f - >/dev/null
    echo "secret/${name} written"
}

random_token() {
    python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
}

main() {
    kubectl get namespace "${NAMESPACE}" >/dev/null
    if [[ -z "${RADFORGE_SALT:-}" ]] && ! exists radforge-secrets; then
        echo "RADFORGE_SALT is required (at least 8 characters; keep the same salt for a dataset)" >&2
        return 2
    fi
    if [[ -n "${RADFORGE_SALT:-}" ]]; then
        if [[ "${#RADFORGE_SALT}" -lt 8 ]]; then
            echo "RADFORGE_SALT must have at least 8 characters" >&2
            return 2
        fi
        local token="${RADFORGE_API_TOKEN:-}"
        if [[ -z "${token}" ]]; then
            token="$(random_token)"
        fi
        apply radforge-secrets "api-token=${token}" "salt=${RADFORGE_SALT}"
    fi
    if [[ -n "${AWS_ACCESS_KEY_ID:-}" && -n "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
        apply radforge-object-store "AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID}" \
            "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}"
    fi
    if [[ -n "${PGPASSWORD:-}" ]]; then
        apply radforge-postgres "password=${PGPASSWORD}"
    fi
}

main "$@"
