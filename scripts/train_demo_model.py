"""Train the small Korean GPT-2 shipped with the package (src/kogpt2_serving/demo_model/).

Data: the Constitution of the Republic of Korea and ten National Assembly bills that konlpy 0.6.0
ships (`konlpy/data/corpus/kolaw`, `konlpy/data/corpus/kobill`), read straight from the
installed package or from its wheel (downloaded with pip; konlpy's Java parts are not needed).
Every 10th line is held out for validation.

Steps, all deterministic for a fixed --seed:
1. a SentencePiece BPE vocabulary with KoGPT2's special pieces (<unk>, <s>, </s>, <pad>,
   <unused0>..<unused97>), trained on the training lines only;
2. this package's own GPT2Model trained with MXNet/Gluon on `<s> line </s>` streams cut into
   windows (Adam with decoupled weight decay, i.e. AdamW; warm-up then cosine decay; dropout 0.1);
3. held-out perplexity next to a unigram baseline (add-one smoothed training frequencies)
   over exactly the same target tokens;
4. the model directory in KoGPT2's layout: `*.params` (structural names, de-duplicated,
   float16; cast to float32 on load) + `*.spiece` + `config.json`, plus heldout.txt,
   metrics.json and a model card (README.md) written from the measured numbers.

Why the weight decay is decoupled: the first shipped model (held-out perplexity 52.0) was trained
with MXNet's Adam `wd`, an L2 term added to the gradient before Adam's per-element normalisation;
at initialisation the loss gradient of the attention's query and key rows is ~10x smaller than
that term (each is proportional to the other, both small), so Adam drove them to zero at about
`lr` per step, a fixed point of training, and float16 storage flushed what was left (1e-11 and
below) to exactly 0.0: every attention was uniform. Decay is now applied to the weights directly,
`w -= lr * wd * w`, outside Adam's normalisation (`decay_weights`).

Usage: python scripts/train_demo_model.py [--out DIR] [--steps N] [--quick]
"""
import argparse
import glob
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from kogpt2_serving.model.device import configure_threads  # noqa: E402

KONLPY = "konlpy==0.6.0"
SOURCES = ("konlpy/data/corpus/kolaw/constitution.txt", "konlpy/data/corpus/kobill/")
SPECIALS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3)
UNUSED = ["<unused{}>".format(i) for i in range(98)]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "src", "kogpt2_serving", "demo_model"))
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.01, help="decoupled weight decay (AdamW's), per unit of lr")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--quick", action="store_true", help="a few steps, to check the pipeline")
    p.add_argument("--rewrite-card", action="store_true",
                   help="only rewrite --out's README.md from its metrics.json and config.json (no training)")
    return p.parse_args()


def main():
    args = parse_args()
    if args.rewrite_card:
        return rewrite_card(args.out)
    if args.quick:
        args.steps = 20
    os.environ["MXNET_ENFORCE_DETERMINISM"] = "1"
    threads = configure_threads()  # KOGPT2_THREADS, else one per core
    import mxnet as mx
    import numpy as np

    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    texts = read_corpus()
    train_lines, heldout_lines = split_lines(texts)
    work = tempfile.mkdtemp(prefix="demo-train-")
    spiece = train_sentencepiece(train_lines, os.path.join(work, "sp"), args.vocab_size)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spiece)
    train_ids = stream(sp, train_lines)
    heldout_ids = stream(sp, heldout_lines)
    print("corpus: %d train lines (%d tokens), %d held-out lines (%d tokens), vocab %d" % (
        len(train_lines), len(train_ids), len(heldout_lines), len(heldout_ids), sp.GetPieceSize()), flush=True)
    config, model, seconds, cpu_seconds = train(args, sp.GetPieceSize(), train_ids)
    write_model_dir(args.out, model, config, spiece, heldout_lines)
    # Everything reported is measured on the model as shipped: reloaded, float16 weights cast back.
    from kogpt2_serving.files.loader import load_model

    shipped = load_model(args.out, device="cpu")
    metrics = evaluate(args, shipped.engine, train_ids, heldout_ids, sp.GetPieceSize())
    metrics.update(train_seconds=round(seconds, 1), train_cpu_seconds=round(cpu_seconds, 1), threads=threads,
                   steps=args.steps, seed=args.seed, window=args.window, batch=args.batch,
                   previous_heldout_perplexity=PREVIOUS_HELDOUT_PERPLEXITY,
                   previous_train_perplexity=PREVIOUS_TRAIN_PERPLEXITY, train_tokens=len(train_ids),
                   heldout_tokens=len(heldout_ids), vocab_size=sp.GetPieceSize(),
                   parameters=count_parameters(model), command=" ".join(["python"] + sys.argv),
                   date=time.strftime("%Y-%m-%d"), mxnet=mx.__version__, samples=greedy_samples(shipped))
    write_metrics(args.out, config, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "unigram_counts"}, ensure_ascii=False, indent=1))


def read_corpus():
    """{name: text} from the installed konlpy, else from its wheel fetched with pip."""
    try:
        import konlpy

        base = os.path.dirname(os.path.dirname(konlpy.__file__))
        names = [SOURCES[0]] + sorted(os.path.relpath(p, base) for p in glob.glob(
            os.path.join(base, SOURCES[1], "*.txt")))
        return {n: io.open(os.path.join(base, n), encoding="utf-8").read() for n in names}
    except ImportError:
        pass
    cache = os.path.join(ROOT, ".cache", "konlpy")
    wheels = glob.glob(os.path.join(cache, "konlpy-0.6.0-*.whl"))
    if not wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps", KONLPY, "-d", cache])
        wheels = glob.glob(os.path.join(cache, "konlpy-0.6.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        names = sorted(n for n in z.namelist() if n == SOURCES[0] or (n.startswith(SOURCES[1]) and n.endswith(".txt")))
        return {n: z.read(n).decode("utf-8") for n in names}


def split_lines(texts):
    """Non-empty lines, whitespace folded; every 10th (per document) held out."""
    train, heldout = [], []
    for name in sorted(texts):
        lines = [" ".join(line.split()) for line in texts[name].splitlines()]
        for i, line in enumerate(l for l in lines if l):
            (heldout if i % 10 == 9 else train).append(line)
    return train, heldout


def train_sentencepiece(lines, prefix, vocab_size):
    """The model file records its model_prefix; a relative one (trained from inside the work
    directory) keeps a temporary directory's name out of it, so the bytes are reproducible."""
    import sentencepiece as spm

    here = os.getcwd()
    os.chdir(os.path.dirname(prefix))
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(lines), model_prefix=os.path.basename(prefix), model_type="bpe",
            vocab_size=vocab_size, character_coverage=1.0, user_defined_symbols=UNUSED, minloglevel=2,
            num_threads=1, **SPECIALS)
    finally:
        os.chdir(here)
    return prefix + ".model"


def stream(sp, lines):
    """<s> line </s> for every line, concatenated."""
    ids = []
    for line in lines:
        ids += [sp.bos_id()] + sp.encode(line) + [sp.eos_id()]
    return ids


def train(args, vocab_size, ids):
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from kogpt2_serving.files.config import GPT2Config
    from kogpt2_serving.model.network import MASKED, GPT2Model

    config = GPT2Config(vocab_size=vocab_size, n_positions=args.n_positions, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_embd // 64)
    model = GPT2Model(config, dropout=0.1)
    initialize(model, mx.init.Normal(0.02))
    model.hybridize(static_alloc=True, static_shape=True)
    schedule = WarmupCosine(args.lr, warmup=min(100, args.steps // 10 + 1), total=args.steps)
    trained = [p for p in model.collect_params().values() if p.grad_req != "null"]  # not the step kernels
    # No "wd" here: MXNet's Adam adds it to the gradient, where it collapses attention (module docstring).
    trainer = gluon.Trainer(trained, "adam", {"learning_rate": args.lr, "lr_scheduler": schedule})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    T, B = args.window, args.batch
    data = np.array(ids, dtype="int32")
    rng = np.random.RandomState(args.seed)
    positions = mx.nd.array(np.broadcast_to(np.arange(T), (B, T)), dtype="int32")
    causal = np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, MASKED)
    mask = mx.nd.array(np.broadcast_to(causal, (B, T, T)))
    started, cpu_started = time.time(), time.process_time()
    for step in range(1, args.steps + 1):
        starts = rng.randint(0, len(data) - T - 1, size=B)
        x = mx.nd.array(np.stack([data[s:s + T] for s in starts]), dtype="int32")
        y = mx.nd.array(np.stack([data[s + 1:s + T + 1] for s in starts]))
        with autograd.record(), warnings.catch_warnings():
            # The full pass does not read the step kernels (decode steps do); Gluon says so once.
            warnings.filterwarnings("ignore", message="Parameter .* is not used by any computation")
            loss = loss_fn(model(x, positions, mask), y).mean()
        loss.backward()
        trainer.step(1)
        decay_weights(trained, trainer.learning_rate * args.wd)  # this step's scheduled rate
        if step % 100 == 0 or step == args.steps:
            print("step %d/%d loss %.3f lr %.2e %.0f s" % (step, args.steps, loss.asscalar(),
                                                          trainer.learning_rate, time.time() - started), flush=True)
    return config, model, time.time() - started, time.process_time() - cpu_started


def registration_order(n_layer):
    """[(canonical name, network name)] of every parameter, step kernels included, in the order
    the network registered them when the shipped demo model was trained, which is the order
    model.initialize drew its random initial weights in: Normal draws one array after another
    from MXNet's generator, so a network registering the same parameters in another order would
    put other numbers into each weight for the same --seed. That order is the weight table's
    checkpoint order (model/weights.py), with each Linear's step kernel right after its bias
    (kernels draw too, though fill_step_weights overwrites them) and the LM head's kernel last
    (its weight is the embedding's, drawn first)."""
    from kogpt2_serving.model.network import STEP_WEIGHT
    from kogpt2_serving.model.weights import TIED, in_checkpoint_order, weights

    def kernel(name):  # '<linear>.bias' -> '<linear>.step_weight'
        return name.rsplit(".", 1)[0] + "." + STEP_WEIGHT

    order = []
    for w in in_checkpoint_order(weights(n_layer)):
        order.append((w.canonical, w.network))
        if w.canonical.endswith(".bias"):  # only Linears have one (LayerNorms: gamma, beta)
            order.append((kernel(w.canonical), kernel(w.network)))
    return order + [(kernel(TIED[1]), kernel(TIED[1]))]


def initialize(model, init):
    """model.initialize(init), one parameter at a time in registration_order, whatever order
    the network registers them in now: the same --seed gives the shipped model's initial weights.
    The int8 scales (which came later, and only get values when a model loads as int8) are left
    uninitialised: they draw nothing."""
    from kogpt2_serving.model.compat import structural_parameters
    from kogpt2_serving.model.network import INT8_SCALE
    from kogpt2_serving.model.weights import TIED

    own = {name: p for name, p in structural_parameters(model).items() if not name.endswith("." + INT8_SCALE)}
    order = [network for _, network in registration_order(model.config.n_layer)]
    if sorted(order) != sorted(set(own) - {TIED[1]}):  # the tied head is initialised as the embedding
        raise RuntimeError("registration_order does not list the network's parameters: missing {}, unknown {}".format(
            sorted(set(own) - set(order) - {TIED[1]}), sorted(set(order) - set(own))))
    for name in order:
        own[name].initialize(default_init=init)  # as Block.initialize does: the parameter's own init, else init


def decay_weights(params, rate):
    """Decoupled weight decay (Loshchilov & Hutter's AdamW): w -= rate * w, in place, apart from
    the gradient, so Adam's normalisation cannot turn it into a step of ~lr towards zero."""
    for param in params:
        data = param.data()
        data *= 1 - rate


class WarmupCosine:
    """Linear warm-up, then cosine decay to 10% of the peak rate."""

    def __init__(self, peak, warmup, total):
        self.peak, self.warmup, self.total = peak, warmup, total
        self.base_lr = peak

    def __call__(self, update):
        if update < self.warmup:
            return self.peak * (update + 1) / self.warmup
        progress = (update - self.warmup) / max(1, self.total - self.warmup)
        return self.peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


SAMPLE_PROMPTS = ["대한민국은", "대한민국의 주권은", "모든 국민은"]
# The first shipped model (2026-11-25, same corpus, split, tokenizer and hyperparameters), trained
# with Adam's coupled L2 decay, which zeroed every query and key (module docstring): its held-out
# perplexity, and its perplexity on the training stream (measured 2026-12-01 as evaluate() does).
PREVIOUS_HELDOUT_PERPLEXITY = 52.0
PREVIOUS_TRAIN_PERPLEXITY = 24.96


def evaluate(args, engine, train_ids, heldout_ids, vocab_size):
    """Held-out perplexity of the model and of a unigram model, over the same targets; the
    margin the model card promises is half the measured ratio, rounded down. The model's
    perplexity on its own training stream shows how much of that it has memorised."""
    import numpy as np

    from kogpt2_serving.generation.perplexity import model_nll, unigram_counts, unigram_nll

    counts = unigram_counts(train_ids, vocab_size)
    model_loss, targets = model_nll(engine, heldout_ids, args.window)
    unigram_loss = unigram_nll(counts, heldout_ids)
    ratio = float(np.exp(unigram_loss - model_loss))
    train_loss, _ = model_nll(engine, train_ids, args.window)
    return {"heldout_perplexity": round(float(np.exp(model_loss)), 2),
            "train_perplexity": round(float(np.exp(train_loss)), 2),
            "unigram_perplexity": round(float(np.exp(unigram_loss)), 2),
            "promised_margin": math.floor(ratio * 10 / 2) / 10,
            "scored_tokens": targets, "unigram_counts": counts.tolist()}


def greedy_samples(loaded):
    from kogpt2_serving.generation.generator import Generator
    from kogpt2_serving.generation.params import parse_parameters

    params = parse_parameters({"max_new_tokens": 40})
    results = Generator(loaded).generate(SAMPLE_PROMPTS, params)
    return {prompt: prompt + seqs[0].text for prompt, seqs in zip(SAMPLE_PROMPTS, results)}


def count_parameters(model):
    import numpy as np

    unique = {id(p): p for p in model.named_weights().values()}  # the tied head once, no step kernels
    return int(sum(np.prod(p.shape) for p in unique.values()))


def write_model_dir(out, model, config, spiece, heldout_lines):
    from kogpt2_serving.files import checkpoint
    from kogpt2_serving.files.config import write_config_file
    from kogpt2_serving.testing import store_with_md5

    os.makedirs(out, exist_ok=True)
    for old in glob.glob(os.path.join(out, "*.params")) + glob.glob(os.path.join(out, "*.spiece")):
        os.remove(old)
    tmp = os.path.join(out, ".params.tmp")
    checkpoint.save_params(model, tmp, layout="deduplicated", float16=True)
    store_with_md5(tmp, out, "mxnet_kogpt2_demo_{}.params")
    os.remove(tmp)
    store_with_md5(spiece, out, "kogpt2_demo_{}.spiece")
    write_config_file(config, os.path.join(out, "config.json"))
    with io.open(os.path.join(out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(heldout_lines) + "\n")


def write_metrics(out, config, metrics):
    with io.open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1, ensure_ascii=False)
        f.write("\n")
    params = glob.glob(os.path.join(out, "*.params"))[0]
    spiece = glob.glob(os.path.join(out, "*.spiece"))[0]
    with io.open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(config, metrics, os.path.basename(params), os.path.basename(spiece),
                           os.path.getsize(params)))


def rewrite_card(out):
    from kogpt2_serving.files.config import read_config_file

    with io.open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    write_metrics(out, read_config_file(os.path.join(out, "config.json")), metrics)


def model_card(config, m, params_name, spiece_name, params_bytes):
    samples = "\n".join("- `{}`".format(text) for text in m["samples"].values())
    return MODEL_CARD.format(
        params_name=params_name, spiece_name=spiece_name, size_mb=params_bytes / 2 ** 20, c=config, m=m,
        ratio=m["unigram_perplexity"] / m["heldout_perplexity"], heads=config.n_head, samples=samples,
        passes=m["steps"] * m["batch"] * m["window"] / m["train_tokens"])


MODEL_CARD = """# KoGPT2 demo model (shipped with kogpt2-serving)

A small Korean GPT-2 in KoGPT2 v1's own file format, trained by `scripts/train_demo_model.py`
so that a fresh install can serve and generate with no download. **For demos and tests only**:
it knows the style of the Korean Constitution and a few National Assembly bills, nothing else.

| | |
|---|---|
| files | `{params_name}` (float16, structural names, de-duplicated; {size_mb:.1f} MiB), `{spiece_name}` (SentencePiece BPE), `config.json` |
| architecture | KoGPT2 v1's: pre-LN, erf GELU, tied LM head; {c.n_layer} layers, {c.n_embd} units, {heads} heads, {c.n_positions} positions |
| parameters | {m[parameters]:,} |
| vocabulary | {m[vocab_size]:,} pieces with KoGPT2's special pieces (`<unk>`, `<s>`, `</s>`, `<pad>`, `<unused0>`..`<unused97>`) |
| training data | Constitution of the Republic of Korea and ten National Assembly bills, as shipped in `konlpy==0.6.0` (`konlpy/data/corpus/kolaw`, `kobill`); {m[train_tokens]:,} training tokens |
| held out | every 10th line ({m[heldout_tokens]:,} tokens, in `heldout.txt`) |
| training | {m[steps]} steps, seed {m[seed]}, {m[train_seconds]:.0f} s ({m[train_cpu_seconds]:.0f} s of CPU time, {m[threads]} thread(s)) on the machine that built it (MXNet {m[mxnet]}), {m[date]} |

## Quality on the held-out lines (same {m[scored_tokens]:,} target tokens)

| model | perplexity |
|---|---|
| this model | {m[heldout_perplexity]} |
| the first shipped demo model (2026-11-25; its queries and keys were all 0.0, so it did not attend) | {m[previous_heldout_perplexity]} |
| unigram baseline (add-one smoothed training frequencies) | {m[unigram_perplexity]} |

The first demo model was trained with MXNet Adam's `wd`, an L2 term added to the gradient before
Adam's normalisation, which drove every query and key weight to zero; this one is trained the
same way otherwise, with decoupled weight decay (AdamW), as `scripts/train_demo_model.py`
explains. On its own training lines this model's perplexity is {m[train_perplexity]}, the first
model's {m[previous_train_perplexity]}: {m[steps]} steps of {m[batch]} windows of {m[window]} tokens are
{passes:.0f} passes over the training tokens, and a model that attends can memorise them. No step
count or regularisation was chosen on the held-out lines.

The model's perplexity is {ratio:.1f}x lower than the unigram baseline's; the test suite checks
it is at least {m[promised_margin]:.1f}x lower (`tests/test_demo_model.py`), recomputing both from
the shipped files.

## Greedy samples (40 new tokens, as shipped)

{samples}

Greedy decoding of a model this small falls into loops, as users of the real KoGPT2 reported
(SKT-AI/KoGPT2 issues #1-#3); ask for `"repetition_penalty": 1.3`, `"no_repeat_ngram_size": 3`
or sampling (`"do_sample": true, "top_p": 0.9`) instead.

## Licence status of the data

The Constitution and National Assembly bills are official legislative texts of the Republic of
Korea; Article 7 of the Korean Copyright Act excludes the constitution, laws, and similar
official texts from copyright protection. konlpy distributes them under its own licence (GPL v3
for the package's code). This note is the project's reading, not legal advice.

## Reproduce

```
{m[command]}
```
"""


if __name__ == "__main__":
    main()
