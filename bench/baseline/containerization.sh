#!/usr/bin/env bash
# The containerization lab's declared-state checks written the way hosted lab platforms write verify scripts:
# one kubectl call per check. The baseline that `labctl check` is measured against (bench/run.py).
# Usage: containerization.sh KUBECTL KUBECONFIG CONTEXT NAMESPACE
set -u
K=("$1" --kubeconfig "$2" --context "$3" -n "$4")
pass=0; fail=0
ok() { if eval "$1"; then pass=$((pass+1)); echo "PASS $2"; else fail=$((fail+1)); echo "FAIL $2"; fi; }
get() { "${K[@]}" get "$@" 2>/dev/null; }

ok '[ -n "$(get deployment hello -o name)" ]' deployment-exists
img=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[*].image}')
ok '[[ -n "$img" && "$img" == *:* && "$img" != *:latest ]]' image-pinned
pol=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[?(@.name=="hello")].image} {.spec.template.spec.containers[?(@.name=="hello")].imagePullPolicy}')
ok '[ "$pol" = "labctl.local/hello:1.0 IfNotPresent" ]' image-from-node
nr=$(get deployment hello -o jsonpath='{.spec.template.spec.securityContext.runAsNonRoot}{.spec.template.spec.containers[0].securityContext.runAsNonRoot} {.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation}')
ok '[[ "$nr" == *true* && "$nr" == *" false" ]]' runs-as-non-root
ks=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[0].securityContext.capabilities.drop} {.spec.template.spec.securityContext.seccompProfile.type}{.spec.template.spec.containers[0].securityContext.seccompProfile.type}')
ok '[[ "$ks" == *ALL* && "$ks" == *RuntimeDefault* ]]' kernel-surface
ro=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem}')
ok '[ "$ro" = true ]' read-only-root
res=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[0].resources.requests.cpu},{.spec.template.spec.containers[0].resources.requests.memory},{.spec.template.spec.containers[0].resources.limits.cpu},{.spec.template.spec.containers[0].resources.limits.memory}')
ok '[[ "$res" != *,,* && "$res" != ,* && "$res" != *, ]]' resources
port=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[?(@.name=="hello")].ports[?(@.name=="http")].containerPort}')
ok '[ "$port" = 8080 ]' named-port
pr=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[0].readinessProbe}|{.spec.template.spec.containers[0].livenessProbe}')
ok '[[ "$pr" != "|"* && "$pr" != *"|" && "${pr%%|*}" != "${pr##*|}" ]]' probes
pe=$(get deployment hello -o jsonpath='{.spec.template.spec.containers[0].readinessProbe.httpGet.path} {.spec.template.spec.containers[0].readinessProbe.httpGet.port} {.spec.template.spec.containers[0].livenessProbe.httpGet.path} {.spec.template.spec.containers[0].livenessProbe.httpGet.port}')
ok '[ "$pe" = "/readyz http /healthz http" ]' probe-endpoints
rep=$(get deployment hello -o jsonpath='{.spec.replicas}')
ok '[ "$rep" = 2 ]' two-replicas
av=$(get deployment hello -o jsonpath='{.status.availableReplicas}')
ok '[ "${av:-0}" -ge 2 ]' deployment-ready
ok '[ -n "$(get service hello -o name)" ]' service-exists
sel=$(get service hello -o jsonpath='{.spec.selector.app\.kubernetes\.io/name}')
ok '[ "$sel" = hello ]' service-selector
tp=$(get service hello -o jsonpath='{.spec.ports[?(@.port==80)].targetPort}')
ok '[ "$tp" = http ]' service-target-port
ready=$(get endpointslices -l kubernetes.io/service-name=hello -o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' | grep -c true)
ok '[ "$ready" -ge 2 ]' service-endpoints

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
