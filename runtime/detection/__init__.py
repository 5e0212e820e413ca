"""Face detection in photos (MTCNN, torch-free): ``FaceDetector.detect(image)`` -> ``DetectedFace`` list."""

from pdsn.runtime.detection.detector import DetectedFace, FaceDetector, default_detector_files

__all__ = ["DetectedFace", "FaceDetector", "default_detector_files"]
