"""`mfnet track`: a video (or a folder of frames) of a person whose identity a result folder
holds -> per-frame head pose, eye gaze and ARKit weights, smoothed, as a Live Link Face style
CSV and an npz (`track.run`). Light modules (`identity`, `livelink`, `smoothing`, `video`)
need no torch, so the CLI checks its inputs before loading it."""
