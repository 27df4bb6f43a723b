"""Left-ventricular myocardium segmentation in myocardial-perfusion SPECT (task plug-in: being written)."""
