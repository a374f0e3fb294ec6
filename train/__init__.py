"""datakit's thin trainer (work in progress): chat templates and exact assistant-only labels.

``train.templates`` renders a canonical record with a named template or the tokenizer's own,
with the character spans that are trained; ``train.labels`` turns that into token ids and
labels (-100 everywhere else). The trainer itself (LoRA via peft, packing, checkpoints and
resume) is the next step of this package.
"""
