"""What comes in: photos, landmark detectors, model files and the allow-list unpickler."""
