"""The real node of the local provider: containerd, runc, CNI, kubelet, kube-proxy and the cluster add-ons.

One module per concern. The configuration renderers and the parsers of what the host reports (iptables-save,
mountinfo, /proc) are pure functions on plain data; the functions that act on the host are kept apart from
them and are used by `labctl.providers.local`.

- `containerd`: containerd's config file and the `ctr` commands labctl needs (import images, stop tasks).
- `cni`: the bridge network conflist.
- `kubelet`, `kubeproxy`: their configuration files.
- `addons`: CoreDNS, the default StorageClass with local-path-provisioner, and their RBAC, as manifests.
- `images`: the node's own images (pause, CoreDNS, the volume helper), built from static binaries.
- `host`: facts about the machine (its primary address, other clusters, kernel settings) and the host record.
- `cleanup`: what `down` removes from the host: iptables chains, ipsets, mounts, links, namespaces.
"""
