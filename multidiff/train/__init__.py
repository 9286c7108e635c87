"""multidiff.train"""
