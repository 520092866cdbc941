"""A faithful synthetic replica of BigEarthNet v2.0 (reBEN) for demos and tests."""
