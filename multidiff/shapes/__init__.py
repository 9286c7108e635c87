"""multidiff.shapes"""
