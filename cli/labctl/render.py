"""Turn a lab's templates and solution files into Kubernetes objects (plain dicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import jinja2
import jinja2.sandbox
import yaml

from labctl.errors import LabDefinitionError

# Kinds that live outside namespaces; everything else gets the lab namespace when it names none.
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleBinding", "PriorityClass", "IngressClass", "GatewayClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    "APIService", "RuntimeClass", "CSIDriver", "VolumeAttachment",
})


def environment(search_path: Path) -> jinja2.Environment:
    """Sandboxed, and strict: a value the template names but the lab does not define is an error."""
    return jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(search_path)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_file(path: Path, base: Path, values: dict[str, Any]) -> str:
    """Render one file: `.j2` files through Jinja2, anything else as is."""
    shown = _shown(path)
    if path.suffix != ".j2":
        return path.read_text()
    try:
        template = environment(base).get_template(path.relative_to(base).as_posix())
        return template.render(**values)
    except jinja2.TemplateSyntaxError as e:
        raise LabDefinitionError(f"{shown}:{e.lineno}: template syntax error: {e.message}") from e
    except jinja2.UndefinedError as e:
        raise LabDefinitionError(
            f"{shown}: {e.message}", hint="define it under `values:` in lab.yaml (the namespace is `namespace`)"
        ) from e
    except jinja2.exceptions.SecurityError as e:
        raise LabDefinitionError(f"{shown}: the template does something not allowed: {e}") from e


def parse_objects(text: str, shown: str) -> list[dict]:
    """YAML documents to objects; empty documents are skipped, anything that is not an object is an error."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise LabDefinitionError(f"{shown}{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    objects = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            raise LabDefinitionError(f"{shown}: document {i + 1} is not a Kubernetes object (apiVersion and kind are required)")
        if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
            raise LabDefinitionError(f"{shown}: {doc['kind']} in document {i + 1} has no metadata.name")
        objects.append(doc)
    return objects


def render_objects(files: Iterable[Path], base: Path, values: dict[str, Any], namespace: str) -> list[dict]:
    """Render and parse files in order; namespaced objects without a namespace land in the lab namespace."""
    objects: list[dict] = []
    context = {**values, "namespace": namespace}
    for path in files:
        if not path.is_file():
            raise LabDefinitionError(f"{_shown(path)}: file not found")
        for obj in parse_objects(render_file(path, base, context), _shown(path)):
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"].setdefault("namespace", namespace)
            objects.append(obj)
    return objects


def to_yaml(objects: list[dict]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def _shown(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[parts.index("labs"):]) if "labs" in parts else str(path)
