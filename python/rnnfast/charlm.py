"""A character-level language model: text in, a trained model and samples out.

The text is cut into ``batch`` parallel streams; truncated BPTT runs along them, carrying
each stream's state from one window to the next, so a sequence of any length is learned with
the memory of ``k2`` steps.

The model reads each character through an ``Embedding`` (character ids -> vectors of
``embedding_dim``) rather than as a one-hot vector: the same function class (a one-hot row
times ``weight_ih`` is a learned vector per character too), with a smaller input projection
and no one-hot arrays to build: on the default configuration an epoch takes about 3/4 of the
one-hot model's time. Checkpoints of the earlier one-hot models still load and resume:
``model_input`` feeds them one-hot rows.
"""

import math
import time
import zlib

import numpy as np

from . import _checkpointed, _checks, checkpoint, optim
from .embedding import Embedding
from .gru import GRU
from .linear import Linear
from .lstm import LSTM
from .model import Model
from .rnn import RNN
from .train import _train_sequence

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
OPTIMISERS = {"sgd": optim.SGD, "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop,
              "adam": optim.Adam, "adamw": optim.AdamW}


def default_text():
    """The text of Python's own help topics: it ships with every CPython (~465 KB)."""
    from pydoc_data.topics import topics
    return "".join(topics[k] for k in sorted(topics))


class Vocabulary:
    """The characters of a text, each with an index."""

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def one_hot(ids, size, dtype):
    out = np.zeros(ids.shape + (size,), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


def model_input(model, ids):
    """What ``model`` reads for the character ids (B, T): the ids themselves when it starts
    with an embedding; their one-hot rows (B, T, V) for a model without one, as checkpoints
    written before the embedding have."""
    if model.embedding is not None:
        return ids
    return one_hot(ids, model.recurrent.input_size, model.dtype)


def streams(ids, batch):
    """``ids`` cut into ``batch`` rows of equal length (the tail that does not fit is dropped)."""
    length = len(ids) // batch
    if length < 2:
        raise ValueError(f"the text is too short for {batch} streams: {len(ids)} characters")
    return ids[:batch * length].reshape(batch, length)


def check_model_options(layers, dropout, bidirectional):
    """Refuse, with the reason, the recurrent options that no character model can use."""
    if bidirectional:
        raise ValueError(
            "a character language model cannot be bidirectional: the reverse direction reads "
            "the text from its end, so at every step it has already seen the next character, "
            "the one the model must predict, and the loss would fall without the model "
            "learning to predict anything (a bidirectional model suits a classifier that reads "
            "the whole text first: examples/text_classifier.py)")
    if dropout > 0 and layers < 2:
        raise ValueError(f"dropout acts between stacked layers, so it needs layers >= 2, got "
                         f"dropout={dropout} with layers={layers}")


def check_run_options(*, epochs, batch, k1, k2, checkpoint_path=None, resume=False):
    """Refuse, before any training, the run settings that would fail or do nothing later."""
    _checks.positive_int(epochs, "epochs")
    _checks.positive_int(batch, "batch")
    _checks.positive_int(k1, "k1")
    if k2 is not None and _checks.positive_int(k2, "k2") < k1:
        raise ValueError(f"k2 must be >= k1 = {k1} (backpropagate through at least the k1 "
                         f"steps that take the loss), got {k2}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs checkpoint_path, the checkpoint to continue from")


def build_model(cell, vocab_size, hidden, layers, dtype, seed, *, embedding_dim=32,
                dropout=0.0, bidirectional=False):
    """Embedding (vocab_size -> embedding_dim) -> ``cell`` stack -> Linear (-> vocab_size).

    Raises ValueError for the options ``check_model_options`` refuses.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    check_model_options(layers, dropout, bidirectional)
    recurrent = CELLS[cell](embedding_dim, hidden, num_layers=layers, dropout=dropout,
                            dtype=dtype, seed=seed)
    return Model(recurrent, Linear(hidden, vocab_size, dtype=dtype, seed=seed + 1),
                 embedding=Embedding(vocab_size, embedding_dim, dtype=dtype, seed=seed + 2))


def epoch(model, optimizer, data, *, k1, k2, windows_per_call=8, clip_norm=None,
          clip_value=None, progress=True, desc="train", comm=None, bptt_checkpoint=None):
    """One pass of truncated BPTT along the streams ``data`` (B, L); returns the mean loss
    (nats per character) and characters per second.

    With ``comm`` (more than one rank), this rank trains its contiguous share of the
    streams, carrying their states, and each window's gradient is the sum over the ranks
    divided by the whole batch's count of characters: the single-process step on every rank.
    """
    B, L = data.shape
    if comm is not None:
        from . import distributed
        data = data[distributed.shard(B, comm)]
    span = k1 * windows_per_call  # steps handed to train_sequence at once, state carried across
    state, total, count = None, 0.0, 0
    start = time.perf_counter()
    bar = range(0, L - 1, span)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc=desc, unit="chunk")
    for s in bar:
        e = min(s + span, L - 1)
        # train_sequence's defaults, and this rank's share of the batch when comm is given
        out = _train_sequence(model, optimizer, model_input(model, data[:, s:e]),
                              data[:, s + 1:e + 1], state=state, loss="cross_entropy",
                              k1=k1, k2=k2, clip_norm=clip_norm, clip_value=clip_value,
                              on_nonfinite="skip", backward_options=None, comm=comm,
                              checkpoint=bptt_checkpoint)
        state = out["state"]
        if out["updates"]:
            total += out["loss"] * (e - s)
            count += e - s
        if progress:
            rate = count * B / (time.perf_counter() - start)
            # bits/char, the unit of the summary printed after the epoch
            bar.set_postfix({"bits/char": f"{bits(total / max(count, 1)):.3f}",
                             "chars/s": f"{rate:.3g}"}, refresh=False)
    seconds = time.perf_counter() - start
    return total / max(count, 1), count * B / seconds


def evaluate(model, data, chunk=256, comm=None):
    """Mean loss (nats per character) of predicting each next character along the streams;
    with ``comm``, each rank reads its share of the streams and the sums are added up."""
    B, L = data.shape
    if comm is not None:
        from . import distributed
        data = data[distributed.shard(B, comm)]
    state, total, count = None, 0.0, 0
    for s in range(0, L - 1, chunk) if len(data) else ():  # a rank may hold no stream
        e = min(s + chunk, L - 1)
        logits, state = model(model_input(model, data[:, s:e]), state)
        target = data[:, s + 1:e + 1]
        shifted = logits - logits.max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(log_p, target[..., None], -1).sum())
        count += target.size
    if comm is not None:
        sums = np.array([total, count], dtype=np.float64)
        comm.Allreduce(distributed.require_mpi().IN_PLACE, sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)


def sample(model, vocab, length, *, prime="\n", temperature=0.8, seed=0):
    """``length`` characters drawn from the model after reading ``prime``."""
    rng = np.random.default_rng(seed)
    ids = vocab.encode(prime)
    logits, state = model(model_input(model, ids[None, :]))
    last, out = logits[0, -1], []
    for _ in range(length):
        z = last.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        i = int(rng.choice(len(p), p=p / p.sum()))
        out.append(i)
        logits, state = model(model_input(model, np.array([[i]])), state)
        last = logits[0, -1]
    return vocab.decode(out)


def bits(nats):
    return nats / math.log(2)


def train(text, *, cell="lstm", hidden=128, layers=1, embedding_dim=32, dropout=0.0,
          bidirectional=False, batch=16, k1=32, k2=None, bptt_checkpoint=None,
          optimizer="adam", lr=3e-3,
          clip_norm=5.0, clip_value=None, epochs=2, seed=0, dtype=np.float32,
          checkpoint_path=None, resume=False, sample_length=300, temperature=0.8,
          valid_fraction=0.05, progress=True, log=print, distributed=False):
    """Train a character model on ``text``; returns (model, vocabulary, history).

    ``epochs`` is the number of epochs this call trains. With ``resume``, they follow the
    checkpoint's: a checkpoint of 4 epochs resumed with ``epochs=2`` trains epochs 5 and 6
    (as ``fit(..., initial_epoch=4, epochs=2)`` does). The model (its cell, sizes, dropout)
    is the checkpoint's, and the arguments that describe a model are not used; a one-hot
    model of an older checkpoint resumes as one.

    The settings of the run (``epochs``, ``batch``, ``k1``, ``k2``, ``resume`` with a
    ``checkpoint_path``) are checked before the text is read, and the checkpoint's
    directory before the first epoch: a mistake fails at once, not after an epoch.

    With ``distributed`` (every rank of ``mpiexec -n N`` calling ``train`` with the same
    text and arguments), the ``batch`` streams are shared out over the ranks and every
    window's gradient is summed over them, so every rank takes the single-process step;
    rank 0's parameters and optimiser state are broadcast first, only rank 0 logs, shows
    progress and samples, the checkpoint is written once (by rank 0), the ranks' parameters
    are compared after every epoch, and an error on one rank ends the job. In a world of one
    it is the single-process run.
    """
    check_model_options(layers, dropout, bidirectional)  # before a long read of the text
    check_run_options(epochs=epochs, batch=batch, k1=k1, k2=k2,
                      checkpoint_path=checkpoint_path, resume=resume)
    _checkpointed.requested_steps(bptt_checkpoint, 0)  # a bad value refused before the text is read
    comm = _world(batch, text, locals()) if distributed else None
    if comm is not None and comm.Get_rank() != 0:
        log, progress, sample_length = (lambda *a, **k: None), False, 0
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    n_valid = int(len(ids) * valid_fraction)
    train_ids, valid_ids = ids[:len(ids) - n_valid], ids[len(ids) - n_valid:]
    train_data = streams(train_ids, batch)
    valid_data = streams(valid_ids, min(batch, max(1, len(valid_ids) // 1000))) \
        if n_valid >= 2 else None

    if optimizer not in OPTIMISERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMISERS)}, got {optimizer!r}")
    first_epoch = 0
    if resume:
        ck = checkpoint.load(checkpoint_path, distributed=comm is not None)
        if ck.metadata.get("vocabulary") != vocab.chars:
            raise ValueError(f"{checkpoint_path} was trained on another text (its vocabulary "
                             f"differs); train afresh, or pass the same --text and --max-chars "
                             f"as the run that wrote it")
        model = ck.model
        opt = OPTIMISERS[ck.optimizer_state["type"].lower()](model.params, lr=lr)
        opt.load_state_dict(ck.optimizer_state)
        first_epoch = ck.epoch
        log(f"resumed from {checkpoint_path} after epoch {first_epoch}; training epochs "
            f"{first_epoch + 1} to {first_epoch + epochs}"
            + ("" if model.embedding is not None else
               " (a model with one-hot input, from before the embedding: it keeps it)"))
    else:
        model = build_model(cell, len(vocab), hidden, layers, dtype, seed,
                            embedding_dim=embedding_dim, dropout=dropout)
        opt = OPTIMISERS[optimizer](model.params, lr=lr)
    log(f"{model}\n{len(text):,} characters, {len(vocab)} distinct; {batch} streams of "
        f"{train_data.shape[1]:,} steps; truncated BPTT(k1={k1}, k2={k2 or k1}"
        f"{'' if bptt_checkpoint is None else f', checkpoint={bptt_checkpoint}'}); {opt!r}")

    if comm is None:
        return _epochs(model, opt, vocab, train_data, valid_data, first_epoch, epochs, k1, k2,
                       clip_norm, clip_value, progress, checkpoint_path, sample_length,
                       temperature, seed, log, None, bptt_checkpoint)
    from . import distributed as dist

    # RankMismatchError comes from gathered checksums: every rank raises it together.
    with dist.abort_on_error(comm, keep=(dist.RankMismatchError,)):
        dist.broadcast_params(model.params, comm=comm)
        dist.broadcast_optimizer(opt, comm=comm)
        return _epochs(model, opt, vocab, train_data, valid_data, first_epoch, epochs, k1, k2,
                       clip_norm, clip_value, progress, checkpoint_path, sample_length,
                       temperature, seed, log, comm, bptt_checkpoint)


def _world(batch, text, arguments):
    """The world communicator once every rank is known to train on the same text with the
    same arguments; None in a world of one."""
    from . import distributed as dist

    comm = dist.require_mpi().COMM_WORLD
    if comm.Get_size() == 1:
        return None
    if batch < comm.Get_size():
        raise ValueError(f"--batch {batch} gives fewer streams than the {comm.Get_size()} "
                         f"ranks: every rank needs at least one stream")
    # the text by its crc32: each rank shards the same streams, so their contents must agree
    same = {k: repr(v) for k, v in arguments.items() if k not in ("text", "log", "progress")}
    same["text"] = (len(text), zlib.crc32(text.encode("utf-8", "replace")))
    dist.check_same(same, "texts or arguments", comm)
    return comm


def _epochs(model, opt, vocab, train_data, valid_data, first_epoch, epochs, k1, k2, clip_norm,
            clip_value, progress, checkpoint_path, sample_length, temperature, seed, log, comm,
            bptt_checkpoint=None):
    history = []
    if checkpoint_path and (comm is None or comm.Get_rank() == 0):
        # here, not after the first epoch's minutes of training
        checkpoint.check_writable(checkpoint_path, "checkpoint_path")
    for ep in range(first_epoch, first_epoch + epochs):
        loss, rate = epoch(model, opt, train_data, k1=k1, k2=k2, clip_norm=clip_norm,
                           clip_value=clip_value, progress=progress, desc=f"epoch {ep + 1}",
                           comm=comm, bptt_checkpoint=bptt_checkpoint)
        record = {"epoch": ep + 1, "loss": loss, "bits_per_char": bits(loss),
                  "chars_per_second": rate}
        if valid_data is not None:
            record["val_loss"] = evaluate(model, valid_data, comm=comm)
            record["val_bits_per_char"] = bits(record["val_loss"])
        if comm is not None:
            from . import distributed
            # rank 0's timing on every rank, so that the checkpoint's history is one run's
            record = comm.bcast(record, root=0)
            distributed.check_params_agree(model.params, f"after epoch {ep + 1}", comm)
        history.append(record)
        log(f"epoch {ep + 1}: train {bits(loss):.3f} bits/char"
            + (f", validation {record['val_bits_per_char']:.3f} bits/char"
               if valid_data is not None else "") + f", {rate:,.0f} chars/s")
        if checkpoint_path:
            checkpoint.save(checkpoint_path, model, opt, epoch=ep + 1,
                            metadata={"vocabulary": vocab.chars, "history": history},
                            distributed=comm is not None)
        if sample_length:
            log("sample:\n" + sample(model, vocab, sample_length, temperature=temperature,
                                     seed=seed + ep) + "\n")
    return model, vocab, history
