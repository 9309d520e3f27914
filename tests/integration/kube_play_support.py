"""Turn the rendered dev overlay plus the consortium's ConfigMap and Secrets into what
`podman kube play` (4.3, Debian 12) can run, changing only what it cannot:

- a `projected` volume (the consortium ConfigMap + the node's own Secret) becomes ConfigMap
  volumes with the same files at the same paths, one per directory (kube play 4.3 mounts only
  HostPath, ConfigMap, EmptyDir and PersistentVolumeClaim volumes, and writes ConfigMap items
  only at the top of a volume); the node's Secret data goes only into its own ConfigMap, so
  each pod still holds only its own keys. The top one is mounted writable, because the
  runtime must make the keys' mount point in it (its files stay root's; the pod's uid 10001
  cannot write them), and kube play 4.3 ignores `defaultMode` (files are 0644);
- container `ports` (declarations, used by the Services' named targets) are dropped: kube
  play 4.3 would turn them into port mappings, which the isolated network (`--network none`,
  one loopback per pod, as a pod's own network namespace) refuses;
- kinds kube play does not run (Service, NetworkPolicy, PodDisruptionBudget, Namespace) are
  left out: those are only validated (tests/ops/test_k8s.py).

Everything else of each Deployment (image, command, args, env, ports, securityContext, the
data volume claim, /tmp emptyDir) is played as rendered.
"""

from __future__ import annotations

import base64
import copy

PLAYED = ("Deployment", "PersistentVolumeClaim")
VALIDATED_ONLY = ("Service", "NetworkPolicy", "PodDisruptionBudget", "Namespace")


def playable(overlay: list[dict], secrets: list[dict]) -> list[dict]:
    config = next(d for d in secrets if d["kind"] == "ConfigMap")
    by_secret = {d["metadata"]["name"]: d for d in secrets if d["kind"] == "Secret"}
    out: list[dict] = []
    for doc in overlay:
        if doc["kind"] == "PersistentVolumeClaim":
            out.append(doc)
        if doc["kind"] != "Deployment":
            continue
        doc = copy.deepcopy(doc)
        spec = doc["spec"]["template"]["spec"]
        # Declarations only (Services name them); kube play would publish them, which needs
        # a network of its own that this machine does not set up.
        for container in spec["containers"]:
            container.pop("ports", None)
        for volume in list(spec["volumes"]):
            if "projected" not in volume:
                continue
            spec["volumes"].remove(volume)
            projected = volume["projected"]
            # path directory -> (key -> content); kube play 4.3 writes ConfigMap items only at
            # the top of a volume, so each directory becomes its own volume mounted there.
            dirs: dict[str, dict[str, str]] = {}
            for source in projected["sources"]:
                if "configMap" in source:
                    assert source["configMap"]["name"] == config["metadata"]["name"]
                    found, items = config["data"], source["configMap"]["items"]
                    decode = False
                else:
                    found = by_secret[source["secret"]["name"]]["data"]
                    items, decode = source["secret"]["items"], True
                for item in items:
                    directory, _, filename = item["path"].rpartition("/")
                    value = found[item["key"]]
                    dirs.setdefault(directory, {})[filename] = (
                        base64.b64decode(value).decode() if decode else value)
            for i, (_, data) in enumerate(sorted(dirs.items())):
                name = f"{doc['metadata']['name']}-{volume['name']}-{i}"
                out.append({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": name}, "data": data})
                spec["volumes"].append({"name": name, "configMap": {
                    "name": name, "defaultMode": projected.get("defaultMode", 0o440)}})
            # Every container that mounted the projected volume (in a pod of two nodes, each
            # mounts its own) mounts its directories instead.
            for container in spec["containers"]:
                mount = next((m for m in container["volumeMounts"]
                              if m["name"] == volume["name"]), None)
                if mount is None:
                    continue
                container["volumeMounts"].remove(mount)
                for i, (directory, _) in enumerate(sorted(dirs.items())):
                    # The top directory's volume is mounted writable only so that the runtime
                    # can make the mount point of the keys' directory inside it; its files stay
                    # root-owned and the container's uid cannot write them.
                    container["volumeMounts"].append({
                        "name": f"{doc['metadata']['name']}-{volume['name']}-{i}",
                        "readOnly": bool(directory),
                        "mountPath": f"{mount['mountPath']}/{directory}".rstrip("/")})
        out.append(doc)
    return out
