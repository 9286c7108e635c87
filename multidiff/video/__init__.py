"""multidiff.video"""
