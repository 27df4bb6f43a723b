"""MedSegAILib: the library behind the MedSegAI 3D Slicer extension.

Layers: a pure core (``core``, ``engine``, ``nets``, ``train``, ``simulate``, ``tasks``, ``zoo``,
``metrics``, ``outputs``) that never imports slicer, qt or vtk, and the MRML bridge (``mrml``) that takes a
scene and nodes as arguments. Heavy modules (torch, SimpleITK) are imported lazily.
"""

__version__ = "0.1.0"
