"""The promptable task: a box or clicks in, one mask per object out (SAM2 / SAM2.1 with
``Sam2Model``, SAM3's interactive mode with ``Sam3TrackerModel``), trained as Meta's SAM2.1.

Parts: :mod:`.spec` (model facts), :mod:`.tiny` (tiny models of the released classes),
:mod:`.prompts` (prompt sampling), :mod:`.samples` (COCO -> batches), :mod:`.module` (the one
forward), :mod:`.loss` (``MultiStepMultiMasksAndIous``), :mod:`.validation` (IoU / Dice).
"""
