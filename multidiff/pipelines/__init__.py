"""multidiff.pipelines"""
