"""
discriminator.py — Token-Level Relevance Discriminator: which response tokens matter for which rubric.

Paper:    paper §3 (Token-Level Relevance Discriminator) and its appendix on training data; METHOD.md §4.
Input:    prompts (B dicts with "rubrics"), response token ids (B, G, T) and token_mask (B, G, T)
Output:   relevance w[b,g,k,t] (B, G, K, T) float32 in [0, 1], 0 on padded tokens and padded rubrics

Model:    any backbone with a one-output head per token (AutoModelForTokenClassification, num_labels = 1) and
          a sigmoid, trained with binary cross-entropy on the RESPONSE tokens. One sequence per (response, rubric):
              "Identify which tokens in the response are relevant to the criteria.\\n\\nCriteria: {rubric}"
              "\\n\\nResponse:\\n\\n" + response tokens
          No question in the input (as in the authors' code). The response keeps the policy's own token ids,
          end-of-sequence token included: without it a causal backbone cannot know a word is the last one.
Labels:   the paper's minimal pairs: a response that meets a rubric, a minimal edit that breaks exactly
          that rubric, the tokens that differ labelled 1 on BOTH sides (token_diff_labels). Who writes the
          edit is outside this file: code (relevance/rubric_world_labels.py, relevance/checker_edits.py) or an LLM
          (relevance/llm_labels.py); relevance/build.py builds and caches a discriminator.
Metrics:  token precision / recall / F1 at 0.5, AUROC, and how often the top-scored token of a VIOLATED
          rubric is relevant (the token RTT would penalise most).

Deviations (numbered as in METHOD.md §9, tagged `# DEVIATION(n)` in the code):
  2. Relevance stays float32 (the authors' code writes it into an integer buffer, truncating soft weights to 0).
  5. build_toy_discriminator makes a tiny model from a config (2-layer bidirectional encoder), trained in minutes;
     with word_match it also reads which response tokens spell a word of the rubric (word_match_marks).
  7. The discriminator reads the end-of-sequence token (the authors' stops before it); train.py sets w = 0 there.

Demo:     python discriminator.py     (trains a tiny encoder on hand-made "Include 'x'." pairs, prints w)
"""

import difflib
import json
import math
import os
import re
import shutil
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification, AutoTokenizer, BertConfig, LlamaConfig

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size
#   M (response, rubric) pairs fed to the discriminator (M ≤ N·K)     L discriminator sequence length

INSTRUCTION = ("Identify which tokens in the response are relevant to the criteria.\n\n"
               "Criteria: {rubric}\n\nResponse:\n\n")
META_FILE = "rtt_discriminator.json"          # written next to the weights by save_discriminator
# Padded tokens per forward pass. On a CPU small chunks win (a chunk's activations stay in cache: 128 ms vs
# 178 ms per toy RL step for 4096- vs 16384-token chunks); raise it on a GPU (train.py --max_batch_tokens).
INFERENCE_BATCH_TOKENS = 4096


# ============================================================================ model, save, load
def build_toy_discriminator(tokenizer, backbone: str = "bidirectional", hidden: int = 64, layers: int = 2,
                            heads: int = 4, intermediate: int = 128, max_len: int = 256, seed: int = 0,
                            word_match: bool = False):
    """A tiny token classifier (1 logit per token) over `tokenizer`'s vocabulary, built from a config. DEVIATION(5)

    backbone "causal": a Llama (left context only; needs the end-of-sequence token in the response).
    backbone "bidirectional": a BERT encoder (every token sees the whole sequence).
    word_match: the encoder also reads, as BERT's token type, which response tokens spell a word of the rubric's
    text (word_match_marks); saved in the config ("rtt_word_match"), so inference computes the same input.
    Dropout is 0: the model is tiny, trained briefly, and inference must be deterministic.
    """
    if word_match and backbone != "bidirectional":
        raise ValueError("word_match is read through BERT's token types: it needs backbone 'bidirectional'")
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_labels=1,
                  num_attention_heads=heads, intermediate_size=intermediate, pad_token_id=tokenizer.pad_token_id)
    if backbone == "causal":
        config = LlamaConfig(num_key_value_heads=heads, max_position_embeddings=max_len, **common)
    elif backbone == "bidirectional":
        config = BertConfig(max_position_embeddings=max_len, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, classifier_dropout=0.0, **common)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose 'causal' or 'bidirectional'")
    config.rtt_word_match = word_match
    return AutoModelForTokenClassification.from_config(config)


def vocab_fingerprint(tokenizer) -> list:
    """What must match for token ids to be reused: the vocabulary (token -> id) and the pad/eos ids."""
    return [sorted(tokenizer.get_vocab().items()), tokenizer.pad_token_id, tokenizer.eos_token_id]


def check_same_tokenizer(disc_tokenizer, policy_tokenizer) -> None:
    """Raise a ValueError when the policy's token ids would mean different tokens to the discriminator."""
    if vocab_fingerprint(disc_tokenizer) != vocab_fingerprint(policy_tokenizer):
        raise ValueError(
            f"the discriminator's tokenizer differs from the policy's (vocabulary of {len(disc_tokenizer)} vs "
            f"{len(policy_tokenizer)} tokens, or different pad/eos ids): the policy's token ids cannot be reused. "
            "Train the discriminator on the policy's tokenizer.")


def save_discriminator(model, tokenizer, path: str, meta: dict | None = None) -> None:
    """save_pretrained (weights + config + tokenizer) and META_FILE into a temporary folder, then rename it
    into place, so a crash mid-save never leaves a half-written checkpoint at `path`."""
    path = os.path.abspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    old = f"{path}.old{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump({"instruction": INSTRUCTION, **(meta or {})}, f, indent=1)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_discriminator(path: str, policy_tokenizer=None, device: str = "cpu"):
    """(model, tokenizer) saved by save_discriminator, or any token-classification checkpoint with one label.
    With `policy_tokenizer`, refuse a checkpoint whose tokenizer would read the policy's ids differently."""
    if not os.path.isdir(path):
        raise ValueError(f"no discriminator checkpoint at {path!r}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if policy_tokenizer is not None:
        check_same_tokenizer(tokenizer, policy_tokenizer)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1).to(device)
    return model.eval(), tokenizer


# ============================================================================ inputs
def prefix_ids(tokenizer, description: str) -> list[int]:
    """Token ids of the fixed instruction with the rubric filled in (METHOD.md §4), after a BOS/CLS if any."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"empty rubric description {description!r}: the discriminator reads the criterion text")
    ids = tokenizer(INSTRUCTION.format(rubric=description), add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return ([start] if start is not None else []) + list(ids)


WORD = re.compile(r"[^\W_]+")                  # a word: a run of letters and digits


def word_match_marks(tokenizer, description: str, response: list[int]) -> list[int]:
    """1 on every response token that spells part of a word the rubric's text also contains (case-insensitive),
    else 0. The exact-match feature of reading-comprehension models: a keyword rubric is about the places its words
    occur, and a small encoder trained on a few thousand pairs does not learn to find them by attention alone.
    A word may span several tokens (" kale" "idos" "cope"): each of them is marked."""
    words = set(WORD.findall(description.lower()))
    decode = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    singles = tokenizer.batch_decode([[token] for token in response], **decode)
    pairs = tokenizer.batch_decode([response[t - 1:t + 1] for t in range(1, len(response))], **decode)
    # token t's characters: what decoding it after token t − 1 adds (its leading space included, for any tokenizer)
    pieces = [piece.lower() for piece in singles[:1] + [pair[len(single):] for pair, single in zip(pairs, singles)]]
    owner = [t for t, piece in enumerate(pieces) for _ in piece]                  # character -> its token
    marks = [0] * len(response)
    for match in WORD.finditer("".join(pieces)):
        if match.group() in words:
            for character in range(match.start(), match.end()):
                marks[owner[character]] = 1
    return marks


def reads_word_match(model) -> bool:
    """Was this discriminator built to read word_match_marks (build_toy_discriminator(word_match=True))?"""
    return bool(getattr(model.config, "rtt_word_match", False))


def encode_pairs(tokenizer, descriptions: list[str], responses: list[list[int]], prefixes: dict | None = None,
                 word_match: bool = False, marks: dict | None = None):
    """M (rubric description, response token ids) pairs -> one right-padded batch of discriminator inputs.
    `prefixes` (description -> prefix_ids) and `marks` ((description, response) -> word_match_marks) are caches
    callers may share across batches (training draws the same pairs again and again).

    Shapes:  input_ids, attention_mask (M, L) long: [instruction + criteria] [response] [pad ...];
             starts (M,) long: position of the first response token;  lengths (M,) long: response tokens;
             token_type_ids (M, L) long: word_match_marks on the response, 0 elsewhere (None without word_match)"""
    if len(descriptions) != len(responses):
        raise ValueError(f"{len(descriptions)} rubric descriptions but {len(responses)} responses")
    prefixes = {} if prefixes is None else prefixes
    rows = []
    for description, response in zip(descriptions, responses):
        if description not in prefixes:
            prefixes[description] = prefix_ids(tokenizer, description)
        rows.append(prefixes[description] + list(response))
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])               # (M, L)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])  # (M, L)
    starts = torch.tensor([len(prefixes[d]) for d in descriptions])                          # (M,)
    token_type_ids = None
    if word_match:
        marks = {} if marks is None else marks
        for key in zip(descriptions, map(tuple, responses)):
            if key not in marks:
                marks[key] = word_match_marks(tokenizer, key[0], list(key[1]))
        rows = [[0] * len(prefixes[d]) + marks[d, tuple(r)] for d, r in zip(descriptions, responses)]
        token_type_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])     # (M, L)
    return input_ids, attention_mask, starts, torch.tensor([len(r) for r in responses]), token_type_ids


def response_logits(model, input_ids, attention_mask, starts, lengths, token_type_ids, width: int) -> torch.Tensor:
    """One forward pass; the logits of the response positions only, left-aligned to `width` columns.

    Shapes:  input_ids, attention_mask, token_type_ids or None (M, L);  starts, lengths (M,)
             ->  (M, width) float, 0 past lengths"""
    device = next(model.parameters()).device
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids.to(device)}
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                   **extra).logits[..., 0]                                        # (M, L)
    cols = torch.arange(width, device=device)                                     # (width,)
    positions = (starts.to(device)[:, None] + cols).clamp(max=input_ids.shape[1] - 1)  # (M, width)
    valid = cols < lengths.to(device)[:, None]                                    # (M, width)
    return logits.gather(1, positions).float().masked_fill(~valid, 0.0)           # (M, width)


# ============================================================================ inference for training
def _rubric_mask(prompts: list[dict]) -> torch.Tensor:
    """(B, K) bool of real rubrics, K = the largest count. A copy of rewards.pad_rubrics (tests/test_layout.py)."""
    counts = [len(p.get("rubrics") or []) for p in prompts]
    if 0 in counts:
        raise ValueError(f"prompt {prompts[counts.index(0)].get('id', '?')!r} has no rubrics")
    return torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]    # (B, K)


def _check_responses(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Validate a relevance provider's inputs; return the number of valid tokens per response (B, G)."""
    if response_ids.dim() != 3 or token_mask.shape != response_ids.shape:
        raise ValueError(f"expected response_ids and token_mask of the same shape (B, G, T), got "
                         f"{tuple(response_ids.shape)} and {tuple(token_mask.shape)}")
    if token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask must be bool, got {token_mask.dtype}")
    if len(prompts) != response_ids.shape[0]:
        raise ValueError(f"{len(prompts)} prompts but response_ids has B = {response_ids.shape[0]}")
    lengths = token_mask.sum(-1).cpu()                                            # (B, G)
    if not torch.equal(torch.arange(token_mask.shape[-1]) < lengths[..., None], token_mask.cpu()):
        raise ValueError("token_mask must be right-padded: True on a prefix of each row, then False")
    return lengths


@torch.no_grad()
def pair_probabilities(model, tokenizer, descriptions: list[str], responses: list[list[int]],
                       max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS) -> list[torch.Tensor]:
    """sigmoid(logit) for every response token of M (rubric, response) pairs, batched under a token budget.

    Pairs are sorted by length so each chunk pads little; a chunk holds as many pairs as fit in
    `max_tokens_per_batch` padded tokens (at least one). Returns M float32 tensors (len(response_m),), in order.
    """
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}")
    prefixes = {d: prefix_ids(tokenizer, d) for d in set(descriptions)}
    totals = [len(prefixes[d]) + len(r) for d, r in zip(descriptions, responses)]
    order = sorted(range(len(responses)), key=lambda i: -totals[i])              # longest first: it sets L
    out: list[torch.Tensor] = [torch.zeros(0)] * len(responses)
    was_training = model.training
    start = 0
    model.eval()
    while start < len(order):
        chunk = order[start:start + max(1, max_tokens_per_batch // totals[order[start]])]
        batch = encode_pairs(tokenizer, [descriptions[i] for i in chunk], [responses[i] for i in chunk], prefixes,
                             reads_word_match(model))
        probs = torch.sigmoid(response_logits(model, *batch, width=int(batch[3].max()))).cpu()  # (M_chunk, width)
        for row, i in enumerate(chunk):
            out[i] = probs[row, :len(responses[i])]
        start += len(chunk)
    model.train(was_training)
    return out


def relevance(model, tokenizer, prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
              max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS) -> torch.Tensor:
    """The discriminator as a relevance provider: w[b,g,k,t] = σ(logit of token t | rubric k, response (b,g)).

    All valid (response, rubric) pairs go through the model in chunks (pair_probabilities). `tokenizer`
    must be the policy's (check_same_tokenizer). A response with no valid token gets an all-zero row.

    Shapes:
        response_ids  (B, G, T)     long   right-padded policy tokens
        token_mask    (B, G, T)     bool   True on generated tokens (end-of-sequence included)
        returns       (B, G, K, T)  float32 in [0, 1]; 0 on padded tokens and padded rubrics
    """
    lengths = _check_responses(prompts, response_ids, token_mask)                 # (B, G)
    b_size, g_size, t_size = response_ids.shape
    weights = torch.zeros(b_size, g_size, _rubric_mask(prompts).shape[1], t_size)  # (B, G, K, T)  float32, DEVIATION(2)
    ids = response_ids.cpu()
    index, descriptions, responses = [], [], []
    for b, prompt in enumerate(prompts):
        for g in range(g_size):
            response = ids[b, g, :int(lengths[b, g])].tolist()
            for k, rubric in enumerate(prompt["rubrics"] if response else []):
                if not str(rubric.get("description", "")).strip():
                    raise ValueError(f"empty rubric description in prompt {prompt.get('id', b)!r}, rubric {k}: "
                                     "the discriminator reads the criterion text")
                index.append((b, g, k))
                descriptions.append(rubric["description"])
                responses.append(response)
    for (b, g, k), p in zip(index, pair_probabilities(model, tokenizer, descriptions, responses, max_tokens_per_batch)):
        weights[b, g, k, :len(p)] = p
    return weights.to(response_ids.device)                                        # (B, G, K, T)


def uniform_relevance(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Ablation: every valid token is fully relevant to every rubric (w = 1). Under INTRA-sample normalisation
    a constant row contributes 0, so RTT with this provider is exactly GRPO (METHOD.md §5); not under inter-sample.
    Shapes:  prompts (B), response_ids / token_mask (B, G, T)  ->  (B, G, K, T) float32"""
    _check_responses(prompts, response_ids, token_mask)
    rubric_mask = _rubric_mask(prompts).to(token_mask.device)                     # (B, K)
    return (rubric_mask[:, None, :, None] & token_mask[:, :, None, :]).float()    # (B, G, K, T)


def random_relevance(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Ablation: w ~ Uniform(0, 1) independently per (response, rubric, token), drawn from `generator`."""
    ones = uniform_relevance(prompts, response_ids, token_mask)                   # (B, G, K, T)
    return torch.rand(ones.shape, generator=generator).to(ones.device) * ones     # (B, G, K, T)


# ============================================================================ labels: minimal pairs
# An example is one discriminator sequence with its targets: {"description": str, "response_ids": list[int],
# "labels": list[float] (one per response token), and optional facts: "type", "violated" (does the response
# fail the rubric?), "side" ("positive" meets it, "negative" breaks it), ...}.
def make_example(description: str, response_ids: list[int], labels: list[float], **info) -> dict:
    """One training/evaluation example; ValueError for an empty rubric, an empty response or a length mismatch."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"empty rubric description {description!r}")
    if len(response_ids) == 0:
        raise ValueError("empty response: an example needs at least one response token to label")
    if len(labels) != len(response_ids):
        raise ValueError(f"labels length mismatch: {len(labels)} labels for {len(response_ids)} response tokens")
    if any(not 0.0 <= float(y) <= 1.0 for y in labels):
        raise ValueError("labels must lie in [0, 1]")
    return {"description": description, "response_ids": list(response_ids), "labels": list(map(float, labels)), **info}


def token_diff_labels(a_ids: list, b_ids: list) -> tuple[list[int], list[int]]:
    """The paper's labels: the tokens that differ between two sequences get 1, the rest 0, on BOTH sides.

    A deleted span has nothing to point at on the shorter side: there we label the token right after the
    gap (e.g. the end-of-sequence token when words were cut from the end), or the last token if the gap
    ends the sequence. Sequences of equal length are also compared position by position, and that reading
    wins when it labels no more tokens (difflib sees a swap of neighbours as a deletion plus an insertion).

    >>> token_diff_labels([5, 6, 7, 2], [5, 9, 7, 2])          # replacement: both sides
    ([0, 1, 0, 0], [0, 1, 0, 0])
    >>> token_diff_labels([5, 6, 7, 2], [5, 6, 8, 7, 2])       # insertion: the token after the gap
    ([0, 0, 1, 0], [0, 0, 1, 0, 0])
    >>> token_diff_labels([5, 6, 7, 2], [5, 7, 6, 2])          # swap of neighbours: both words
    ([0, 1, 1, 0], [0, 1, 1, 0])
    """
    labels_a = [0] * len(a_ids)
    labels_b = [0] * len(b_ids)
    matcher = difflib.SequenceMatcher(None, list(a_ids), list(b_ids), autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        for labels, start, stop in (() if op == "equal" else ((labels_a, i1, i2), (labels_b, j1, j2))):
            if stop > start:
                labels[start:stop] = [1] * (stop - start)
            elif labels:
                labels[min(start, len(labels) - 1)] = 1
    if len(a_ids) == len(b_ids):
        by_position = [int(a != b) for a, b in zip(a_ids, b_ids)]
        if 2 * sum(by_position) <= sum(labels_a) + sum(labels_b):
            return by_position, list(by_position)
    return labels_a, labels_b


# ============================================================================ training
def bce_on_response(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over response tokens only (instruction, criteria, padding ignored).

    L = − mean_{m, t < len_m} [ y·log σ(z) + (1 − y)·log(1 − σ(z)) ]     z = logits, y = labels
    Shapes:  logits, labels (M, width) float;  lengths (M,) long  ->  () scalar"""
    valid = torch.arange(logits.shape[1], device=logits.device) < lengths.to(logits.device)[:, None]  # (M, width)
    return F.binary_cross_entropy_with_logits(logits[valid], labels.to(logits.device)[valid])


def label_matrix(examples: list[dict], width: int) -> torch.Tensor:
    """Labels of M examples left-aligned into (M, width), 0 past each response's length."""
    return torch.tensor([e["labels"] + [0.0] * (width - len(e["labels"])) for e in examples])  # (M, width)


def train_discriminator(model, tokenizer, examples: list[dict], steps: int = 1000, batch_size: int = 64,
                        lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0,
                        progress: Callable | None = None) -> list[float]:
    """AdamW on the response-token BCE, batches drawn uniformly with a seeded generator; the lr warms up
    linearly over the first 5% of the steps, then decays on a cosine to 5%. `progress(step, loss)` is called
    every step when given (a tqdm bar, a print). Returns the loss of every step."""
    if not examples:
        raise ValueError("no training examples")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    model.train()
    losses = []
    prefixes = {}
    marks = {}
    for step in range(steps):
        batch = [examples[i] for i in torch.randint(len(examples), (batch_size,), generator=generator).tolist()]
        input_ids, attention_mask, starts, lengths, token_type_ids = encode_pairs(
            tokenizer, [e["description"] for e in batch], [e["response_ids"] for e in batch], prefixes,
            reads_word_match(model), marks)
        width = int(lengths.max())
        logits = response_logits(model, input_ids, attention_mask, starts, lengths, token_type_ids, width)  # (M, width)
        loss = bce_on_response(logits, label_matrix(batch, width), lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return losses


# ============================================================================ metrics
def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random relevant token > score of a random irrelevant one),
    ties counting 1/2 (Mann–Whitney U with average ranks). NaN when one class is absent.

    >>> auroc(torch.tensor([0.1, 0.4, 0.4, 0.9]), torch.tensor([0, 0, 1, 1]))
    0.875
    """
    scores = scores.flatten().double()
    labels = labels.flatten().bool()
    n_pos = int(labels.sum())
    n_neg = int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    average_rank = torch.cumsum(counts, 0).double() - (counts.double() - 1) / 2  # mean 1-based rank per tie block
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def token_metrics(probs: list[torch.Tensor], labels: list[list[float]], violated: list[bool],
                  threshold: float = 0.5) -> dict:
    """Token precision / recall / F1 at `threshold`, AUROC, and top-1 on violated rubrics with a relevant token."""
    if not probs:
        return {"examples": 0}
    scores = torch.cat([p.float() for p in probs])
    truth = torch.cat([torch.tensor(y) for y in labels]) > 0.5
    predicted = scores >= threshold
    tp = int((predicted & truth).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    # top-1 relevant? Tokens tied at the top share the hit (uniform w: the share of relevant tokens, not argmax's first)
    hits = [float((torch.tensor(y)[p == p.max()] > 0.5).float().mean()) for p, y, v in zip(probs, labels, violated)
            if v and max(y) > 0.5]
    return {"examples": len(probs), "tokens": int(truth.numel()), "relevant_share": float(truth.float().mean()),
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
            "auroc": auroc(scores, truth), "top1_violated": sum(hits) / len(hits) if hits else float("nan")}


def predict_examples(model, tokenizer, examples: list[dict], max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS):
    """The discriminator's relevance for every example's response tokens: a list of (T_m,) float32 tensors."""
    return pair_probabilities(model, tokenizer, [e["description"] for e in examples],
                              [e["response_ids"] for e in examples], max_tokens_per_batch)


if __name__ == "__main__":
    # Self-contained demo: "Include '<word>'." for 3 words, random 6-word responses; the relevant token is the word
    # (the satisfying side of a minimal pair; its other side, a random filler, is not identifiable: METHOD.md §4).
    import random
    import tempfile

    from transformers import BertTokenizer

    words = ["boat", "fish", "moon", "wave", "sand", "star", "tree", "fox", "the", "and", "of", "very"]
    with tempfile.TemporaryDirectory() as folder:                                 # a word-level vocabulary
        with open(os.path.join(folder, "vocab.txt"), "w") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "include", "'", "."] + words))
        tok = BertTokenizer(os.path.join(folder, "vocab.txt"), eos_token="[SEP]")
    rng = random.Random(0)
    examples = []
    for word in [rng.choice(words[:3]) for _ in range(2000)]:
        response = [rng.choice([w for w in words if w != word]) for _ in range(6)]
        response[rng.randrange(6)] = word
        ids = tok.convert_tokens_to_ids(response) + [tok.eos_token_id]           # (T,) with the end-of-sequence token
        without = [tok.convert_tokens_to_ids("the") if t == response.index(word) else i for t, i in enumerate(ids)]
        examples.append(make_example(f"Include '{word}'.", ids, token_diff_labels(ids, without)[0]))
    model = build_toy_discriminator(tok, hidden=32, layers=2, heads=2, intermediate=64)
    losses = train_discriminator(model, tok, examples[:1800], steps=300, batch_size=32, lr=1e-2)
    held_out = examples[1800:]
    metrics = token_metrics(predict_examples(model, tok, held_out), [e["labels"] for e in held_out], [True] * 200)
    print(f"BCE {sum(losses[:20]) / 20:.3f} -> {sum(losses[-20:]) / 20:.3f} in 300 steps; held-out F1 "
          f"{metrics['f1']:.3f}, AUROC {metrics['auroc']:.3f}")
    response = tok.convert_tokens_to_ids("the boat and the moon of".split()) + [tok.eos_token_id]
    for rubric in ("Include 'moon'.", "Include 'boat'."):
        w = relevance(model, tok, [{"rubrics": [{"description": rubric}]}], torch.tensor([[response]]),
                      torch.ones(1, 1, len(response), dtype=torch.bool))[0, 0, 0]  # (T,)
        print(f"{rubric:16s} w =", " ".join(f"{t}:{p:.2f}" for t, p in zip(tok.convert_ids_to_tokens(response), w)))
