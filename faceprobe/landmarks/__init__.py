"""5-point facial landmarks: NME evaluation against a store's ground truth (``nme``,
``evaluate``), a KeypointRCNN trained on it (``rcnn``), and the store extra fields its
predictions are written to (``extra``).

Nothing is imported here: ``faceprobe landmarks evaluate`` must not pay for importing torch.
"""
