"""SER variants over the layers of pretrained upstreams (the upstream_probe recipe).

conf/ser.yaml of upstream_probe lists *templates*: a variant whose ``asr`` is ``upstreams`` stands for
one variant per upstream that stage 2 described, and ``layer: all`` for one per layer (``last``: the
last layer; or a list of layer names). ``type: weighted`` becomes one variant per upstream reading all its layers of the last
layer's dimension (or ``layers: [...]``). Stages 5 and 6 expand them the same way, so their names agree:

    {name: MP, type: mp, asr: upstreams, layer: all}       -> MP-wavlm.layer0, MP-wavlm.layer1, ...
    {name: weighted-MP, type: weighted, head: mp, asr: upstreams} -> weighted-MP-wavlm

``asr: adapted`` expands the same way over the layers of the upstream stage 3 adapted with a CTC head
(``MP-adapted.layer2``), and to nothing when it adapted none. Other variants pass through unchanged.
"""

from __future__ import annotations

import re

from ser_modules.utils.fileio import ManifestError

TEMPLATE_ASR = "upstreams"


ADAPTED_ASR = "adapted"  # the per-fold CTC-adapted upstream (stage 3 with ctc_head: True)


def layer_index(name: str) -> int:
    """The number in ``layerK`` (for ordering layers numerically: layer2 before layer10)."""
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def _chosen(wanted, available: list[str], variant: str) -> list[str]:
    if wanted in (None, "all"):
        return list(available)
    if wanted == "last":
        return [available[-1]]
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ManifestError(f"variant {variant!r}: layers {unknown} do not exist; the upstream has {available}")
    return wanted


def weighted_layers(variant: dict, upstream: dict) -> list[str]:
    """The layers a weighted sum adds: ``layers`` of the variant, or every layer of the last layer's
    dimension (a SpeechBrain encoder's input features may be narrower than its blocks)."""
    dims = upstream.get("dims", {})
    last = dims.get(upstream["layers"][-1])
    if variant.get("layers") in (None, "all"):
        return [n for n in upstream["layers"] if dims.get(n) == last]
    layers = _chosen(variant["layers"], upstream["layers"], variant["name"])
    if len({dims.get(n) for n in layers}) > 1:
        raise ManifestError(f"variant {variant['name']!r}: a weighted sum needs layers of one dimension; "
                            f"{upstream['name']} has {[dims.get(n) for n in layers]} for {layers}")
    return layers


def finetuned_variant(variant: dict, upstream: dict) -> dict:
    """A template with ``finetune_blocks: k`` (``all``: every block) on one upstream: ``<name>-<upstream>``
    reading ``layer{L-k}``; a weighted one reads the stored layers up to it (:func:`weighted_layers`)."""
    n_blocks = len(upstream["layers"]) - 1
    k = n_blocks if variant["finetune_blocks"] == "all" else int(variant["finetune_blocks"])
    first = n_blocks - k
    if first < 0:
        raise ManifestError(f"variant {variant['name']!r}: finetune_blocks {k} of {upstream['name']}, which has "
                            f"{n_blocks} blocks")
    out = {**variant, "name": f"{variant['name']}-{upstream['name']}", "asr": upstream["name"],
           "layer": f"layer{first}", "finetune_blocks": k}
    if variant.get("type") == "weighted":
        layers = [n for n in weighted_layers(variant, upstream) if layer_index(n) <= first]
        if not layers or layers[-1] != f"layer{first}":
            raise ManifestError(f"variant {variant['name']!r}: a weighted sum over fine-tuned blocks needs the stored "
                                f"layer{first} below them among its layers, got {layers}")
        out.update(layer="weighted", layers=layers)
    return out


def expand_variants(variants: list[dict], upstreams: list[dict], adapted: dict | None = None) -> list[dict]:
    """Concrete variants: templates (``asr: upstreams``) expanded over ``upstreams`` (entries of
    ``asr/upstreams.json``: ``name`` and ``layers``) and their layers; ``asr: adapted`` templates over
    the layers of the CTC-adapted upstream ``adapted`` (:func:`ser_modules.asr.saved_models.adapted_upstream_entry`;
    none when stage 3 adapted none); a template with ``finetune_blocks: k`` to one variant per upstream reading
    ``layer{L-k}``; others as given."""
    out = []
    for v in variants:
        if v.get("asr") not in (TEMPLATE_ASR, ADAPTED_ASR):
            out.append(v)
            continue
        for up in upstreams if v["asr"] == TEMPLATE_ASR else [adapted] if adapted else []:
            if v.get("finetune_blocks"):  # the top k blocks fine-tuned from the stored layer below them
                out.append(finetuned_variant(v, up))
                continue
            if v.get("type") == "weighted":
                layers = weighted_layers(v, up)
                out.append({**v, "name": f"{v['name']}-{up['name']}", "asr": up["name"], "layer": "weighted",
                            "layers": layers})
                continue
            for layer in _chosen(v.get("layer"), up["layers"], v["name"]):
                out.append({**v, "name": f"{v['name']}-{up['name']}.{layer}", "asr": up["name"], "layer": layer})
    return out


def resolve_reference(reference: str, names: list[str]) -> str:
    """The reference model of the significance tests: ``reference`` itself, or for a template name
    (``weighted-MP``) its first expansion (``weighted-MP-wavlm``)."""
    if reference in names:
        return reference
    return next((n for n in names if n.startswith(f"{reference}-")), reference)
