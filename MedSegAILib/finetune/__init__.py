"""Local training and fine-tuning for every task (one loop; the tasks provide data, losses and augmentation).

* :mod:`.adapter` — the :class:`TrainingAdapter` a task returns from ``Task.training_adapter(spec)``: how one
  case (the task's inputs + a reference label map) becomes network samples, the loss, the augmentation and the
  prediction used for validation Dice.
* :mod:`.data` — cases from folders of image + mask pairs (NIfTI, NRRD, ``.seg.nrrd``) with their checks, and
  splits by patient (validation share or k folds).
* :mod:`.engine` — :func:`~.engine.finetune` / training from scratch through :func:`MedSegAILib.train.loop.train`
  (devices, mixed precision on CUDA, early stopping, progress, cancel, out-of-memory fall-back).
* :mod:`.publish` — the new model version in the user model folder, written atomically, with its model card,
  training curves and history; export, import and delete of user models.
"""
