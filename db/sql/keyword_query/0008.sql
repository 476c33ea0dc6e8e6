-- A search text as a full-text query over photo_search_document(): any of its words, each read the three ways
-- the document is ('simple' | 'english' | 'russian'), so "Baikal lakes" matches a photo titled "Lake Baikal"
-- and "озера" one tagged "озеро". A Russian stem of four letters or more also matches as a prefix: the Snowball
-- stemmer leaves some inflected names apart ("Байкала" is 'байка', "Байкал" 'байкал'). A word that English or
-- Russian drops as a stop word ("a", "the", "on", "и", "в") is left out: it would match nearly every photo.
-- At most 32 words of at most 100 letters; NULL when no word is left (no keyword match at all). Ranking (ts_rank) puts photos that
-- match more of the words, and in their title or tags, first.
CREATE OR REPLACE FUNCTION keyword_query(query_text text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT string_agg(
               format(
                   '(%s | %s | %s)',
                   simple_term::text,
                   english_term::text,
                   CASE WHEN word ~ '[^\x01-\x7f]' AND numnode(russian_term) = 1 AND length(russian_term::text) >= 6
                        THEN russian_term::text || ':*' ELSE russian_term::text END),
               ' | ')::tsquery
    FROM (
        SELECT word,
               plainto_tsquery('simple', word) AS simple_term,
               plainto_tsquery('english', word) AS english_term,
               plainto_tsquery('russian', word) AS russian_term
        FROM (
            SELECT word FROM unnest(tsvector_to_array(to_tsvector('simple', left(coalesce(query_text, ''), 2000)))) word
            WHERE length(word) <= 100
            ORDER BY word
            LIMIT 32
        ) words
    ) terms
    WHERE numnode(english_term) > 0 AND numnode(russian_term) > 0 AND numnode(simple_term) > 0
$$;
REVOKE ALL ON FUNCTION keyword_query(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keyword_query(text) TO withsense_reader;
