"""evaluate/datasets"""
