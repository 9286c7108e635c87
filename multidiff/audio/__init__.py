"""multidiff.audio"""
