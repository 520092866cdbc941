"""Pipeline stages: plain-Python logic modules and the thin Beam PTransforms that call them."""
