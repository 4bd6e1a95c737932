"""Head models behind one interface (`head.interface.HeadModel`): FLAME from the user's
files, the generated test head, and the vertex-subset rig the fit evaluates."""
