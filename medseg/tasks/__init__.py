"""Task kinds, chosen by ``task.builder`` (``_target_``, from the ``task`` config group).

Each kind is one module holding its builder and its validator: it turns the ``dataset`` config
into datasets, loaders (``dataset.loader``, as every kind does through
:func:`medseg.data.loaders.make_loaders`) and a :class:`~medseg.engine.protocols.Validator`. The
engine (training loop, checkpoints, logging, resume, run folder) is the same for all kinds.

Adding a kind: a module here with a ``build(cfg) -> TrainingData`` class, and a file in
``conf/task/`` that names it and picks its model, loss, augment and inferer.
"""

from medseg.engine.protocols import TrainingData, Validator
from medseg.tasks.classification import ClassificationTask, ClassificationValidator
from medseg.tasks.segmentation import SegmentationTask, SegmentationValidator

__all__ = ["TrainingData", "Validator", "SegmentationTask", "SegmentationValidator", "ClassificationTask",
           "ClassificationValidator"]
