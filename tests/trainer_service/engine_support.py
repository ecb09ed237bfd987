"""A tiny corpus, plan and event recorder shared by the training-engine tests."""

from __future__ import annotations

from chargpt.core.config import ModelConfig
from trainer_service.training.api import TrainingEvent, TrainingPlan
from trainer_service.training.data import CorpusData

TEXT = "".join(f"{i % 7} little pigs went to market and {i % 5} came home again.\n" for i in range(150))


class Recorder:
    def __init__(self) -> None:
        self.events: list[TrainingEvent] = []

    def emit(self, event: TrainingEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]



def make_plan(**update: object) -> TrainingPlan:
    vocab = CorpusData(TEXT).tokenizer.vocab_size
    model = ModelConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    plan = TrainingPlan(job_id="job-1", model=model, max_steps=40, batch_size=8, learning_rate=3e-3,
                        min_learning_rate=3e-4, warmup_steps=4, weight_decay=0.1, grad_clip=1.0, eval_interval=20,
                        sample_interval=20, sample_length=24, seed=7, checkpoint_interval=0, precision="fp32",
                        device="cpu")
    return plan.model_copy(update=update)


def never() -> bool:
    return False
