"""Code shared by the MedSegAI task modules (installed beside them, never loaded as a Slicer module).

* ``widgetBase.MedSegAIWidgetBase`` - the GUI, built from a task plug-in;
* ``moduleBase`` - module description, module logic (``MedSegAIModuleLogic``) and self-test helpers;
* ``parameters`` - the parameter-node wrappers; ``taskform`` - task plug-in -> GUI description (pure Python);
* ``worker`` - the background run with polled progress (pure Python); ``dependencies`` - first-use installs.

Submodules are imported explicitly; importing this package imports nothing else (it only makes the
library importable when running from the source tree).
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

# Source-tree convenience: with MedSegAI/ as an additional module path, MedSegAILib lives one level up
# (in a built or installed extension it is copied beside the modules and already importable).
if _importlib_util.find_spec("MedSegAILib") is None:
    _root = _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    if _os.path.isfile(_os.path.join(_root, "MedSegAILib", "__init__.py")):
        _sys.path.append(_root)
