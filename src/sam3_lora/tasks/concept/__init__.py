"""tasks/concept"""
