"""What goes out: the baked texture, the result folder, report.json and its pictures."""
