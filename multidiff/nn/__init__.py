"""multidiff.nn"""
