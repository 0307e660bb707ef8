"""Capture inside training: `attach()` an Observer to a model and optimizer, and it records.

    import trainer_hooks
    with trainer_hooks.attach(model, optimizer, run="my-run", archive="./archive") as obs:
        for batch in loader:
            loss = model(batch); loss.backward()
            obs.record_loss(loss, tokens=n)
            optimizer.step(); optimizer.zero_grad()
"""

from trainer_hooks.checkpoint_audit import CheckpointAudit, audit_file, audit_object, save_checkpoint
from trainer_hooks.config import ObserverConfig
from trainer_hooks.data import observe_batches
from trainer_hooks.observer import Observer, attach

__all__ = [
    "CheckpointAudit", "Observer", "ObserverConfig", "attach", "audit_file", "audit_object", "observe_batches",
    "save_checkpoint",
]
