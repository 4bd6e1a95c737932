"""Head models behind one interface (`head.interface.HeadModel`): FLAME from the user's
files, the generated test head, and the vertex subsets the fit evaluates."""
