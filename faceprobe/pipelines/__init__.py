"""Runs that chain several stages (embed -> heads -> landmarks -> report), e.g. ``faceprobe demo``.

Only this package and ``faceprobe.commands`` call more than one stage; the stages themselves
depend only on the base modules (data, errors, files) and on stages below them.
"""
